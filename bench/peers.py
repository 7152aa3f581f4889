"""The methods under comparison: portalign and its peers, behind one small interface.

Every method answers in the DESIGN.md contract (:class:`bench.geometry.Pose`).
Per reference a method may prepare state (``prepare``, timed separately); the
per-frame call (``register``) is what the latency figures time. A peer that
cannot be imported is reported with the import error and skipped.

Fairness notes (also written into the results):

* Peers receive the field masks precomputed (not timed): the planned field for
  simulated frames, a detected one for the real Winston-Lutz images, eroded by the
  same 3 mm edge band as portalign's default. portalign finds the field itself
  inside its timed call.
* The correlation peers (ECC, phase correlation) need intensities that correlate
  positively: an MV frame (transmission, bone dark) is turned into an attenuation
  image (``-log``) before it is compared with a kV DRR (line integral, bone
  bright). The MI peers take the images as they are.
* Peers use their libraries' default thread counts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import portalign
from portalign import RegistrationOptions

from .cases import Case
from .geometry import Pose, affine_px_to_mm, physical_origin, pose_from_affine_mm

__all__ = [
    "Outcome",
    "Method",
    "PortalignMethod",
    "SimpleITKMethod",
    "ElastixMethod",
    "ECCMethod",
    "PhaseCorrelationMethod",
    "PEERS",
    "make_methods",
    "translation_error",
    "BENCH_EXTRA",
]

#: How a missing peer library is installed (bench/ runs from a source checkout: its extra, editable).
BENCH_EXTRA = 'pip install -e ".[bench]" (the bench extra)'


@dataclass
class Outcome:
    """What one registration returned."""

    pose: Pose
    ok: bool = True
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class: a registration method with optional start-up and per-reference preparation.

    Attributes
    ----------
    name : str
        Short id used in tables (``portalign-cpu``, ``simpleitk``...).
    available : bool
        False when the library (or backend) is missing; ``reason`` says why.
    version : str
    settings : dict
        Everything that configures the method, written into the results.
    startup_ms : float
        Import and first-call cost, excluded from latency.
    """

    name = "method"
    description = ""

    def __init__(self) -> None:
        self.available = True
        self.reason = ""
        self.version = ""
        self.settings: dict[str, Any] = {}
        self.startup_ms = float("nan")
        self.threads: int | None = None

    def start(self) -> None:
        """Import the library and pay its first-call costs (timed into ``startup_ms``)."""
        t0 = time.perf_counter()
        try:
            self._import()
        except ModuleNotFoundError as exc:  # the peers are the bench extra: say which install brings them
            self.available = False
            self.reason = f"{exc.name or exc} is not installed: {BENCH_EXTRA}"
            return
        except Exception as exc:  # any other import failure makes the peer unavailable, not the run
            self.available = False
            self.reason = f"{type(exc).__name__}: {exc}"
            return
        try:
            warm = _tiny_case()
            state = self.prepare(warm)
            self.register(state, warm)
        except Exception as exc:
            self.available = False
            self.reason = f"first call failed: {type(exc).__name__}: {exc}"
            return
        self.startup_ms = (time.perf_counter() - t0) * 1e3

    def _import(self) -> None:
        raise NotImplementedError

    def prepare(self, case: Case) -> Any:
        """Per-reference state (reference images converted once); not part of per-frame latency."""
        return None

    def register(self, state: Any, case: Case) -> Outcome:
        """Register ``case.frame`` against ``case.reference`` (timed per frame)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "name": self.name,
            "description": self.description,
            "available": self.available,
            "reason": self.reason,
            "version": self.version,
            "settings": self.settings,
            "startup_ms": self.startup_ms,
            "threads": self.threads,
        }


def translation_error(method: Method, name: str, reference: Any, frame: Any, dx_mm: float, dy_mm: float) -> float:
    """Register a rendered pair with a peer and return its in-plane translation error (mm) against ``(dx, dy)``.

    The pair is a ``portal`` case whose rotation is not scored; the peer's masks come from :meth:`Case.mask`.
    Raises whatever the peer raises.
    """
    case = Case(name, "portal", reference, frame, Pose(dx_mm, dy_mm, 0.0), "simulated", rotation_observable=False)
    pose = method.register(method.prepare(case), case).pose
    return math.hypot(pose.dx_mm - dx_mm, pose.dy_mm - dy_mm)


def _tiny_case() -> Case:
    from .cases import synthetic_case

    return synthetic_case((96, 128), seed=12345, pose=Pose(1.0, -0.5, 0.5), spacing_mm=0.5)


# --- portalign ------------------------------------------------------------------------------------


class PortalignMethod(Method):
    """portalign as shipped: default :class:`RegistrationOptions`, one backend."""

    def __init__(self, backend: str = "cpu", options: RegistrationOptions | None = None) -> None:
        super().__init__()
        self.backend_name = backend
        self.name = f"portalign-{backend}"
        self.description = f"portalign {portalign.__version__} ({backend} backend, default options)"
        self.options = options or RegistrationOptions()
        self.version = portalign.__version__
        self.settings = {"backend": backend, "options": self.options.as_dict()}
        self.first_frame_ms = float("nan")
        self.import_ms = float("nan")
        self.backend: Any = None

    def start(self) -> None:
        """Select the backend; the first-frame cost (JIT or cache load) is measured on the first real case."""
        t0 = time.perf_counter()
        try:
            self.backend = portalign.select_backend(self.backend_name)
        except portalign.BackendUnavailableError as exc:
            self.available = False
            self.reason = str(exc)
            return
        if getattr(self.backend, "simulated", False):
            self.available = False
            self.reason = f"{self.backend.device}: a simulator is not benchmarked"
            return
        self.settings["device"] = self.backend.device
        if self.backend_name == "cpu":
            import numba

            self.threads = int(numba.get_num_threads())
        self.startup_ms = (time.perf_counter() - t0) * 1e3

    def prepare(self, case: Case) -> Any:
        return portalign.prepare_reference(case.reference, self.options, backend=self.backend)

    def register(self, state: Any, case: Case) -> Outcome:
        r = state.register(case.frame)
        # a rotation not estimated (null) was held at 0 while the translation was found: score it as 0,
        # and say so in the extras
        rotation = 0.0 if r.rotation_deg is None else r.rotation_deg
        measured = r.dx_mm is not None and r.dy_mm is not None  # else nothing measured: NaN, a refusal
        return Outcome(Pose(r.dx_mm if measured else math.nan, r.dy_mm if measured else math.nan, rotation),
                       bool(r.ok), r.reason,
                       {"score": r.score, "engine_elapsed_ms": r.elapsed_ms, "field_detected": r.field_detected,
                        "rotation_estimated": r.rotation_deg is not None})

    def batch_call(self, state: Any) -> Any:
        """The backend's batch entry point (``portalign.register_batch`` for the GPU), or None."""
        if self.backend_name == "gpu":
            try:
                from portalign import register_batch
            except ImportError:
                return None
            return lambda frames: register_batch(state, frames)
        return getattr(state, "register_batch", None)

    def register_batch(self, state: Any, case: Case, batch: int) -> None:
        """Register ``batch`` copies of the frame: the backend's batch call when it has one, else a loop."""
        frames = [case.frame] * batch
        call = self.batch_call(state)
        if call is not None:
            call(frames)
        else:
            for f in frames:
                state.register(f)


# --- SimpleITK ------------------------------------------------------------------------------------


class SimpleITKMethod(Method):
    """SimpleITK Mattes MI, Euler2D, 4/2/1 pyramid, regular-step gradient descent, fixed mask."""

    name = "simpleitk"
    description = "SimpleITK ImageRegistrationMethod: Mattes MI (32 bins), Euler2DTransform"

    #: Metric sampling: a random fraction of the (masked) fixed pixels per level, fixed seed, at least
    #: MIN_SAMPLES pixels (all of them when the level has fewer) and at least MIN_FRACTION of them.
    MIN_SAMPLES = 20000
    MIN_FRACTION = 0.1
    SHRINK = (4, 2, 1)

    def _sampling(self, shape: tuple[int, int], mask: np.ndarray | None) -> list[float]:
        n = float(mask.sum()) if mask is not None else float(shape[0] * shape[1])
        return [min(1.0, max(self.MIN_FRACTION, self.MIN_SAMPLES / max(n / (f * f), 1.0))) for f in self.SHRINK]

    def _import(self) -> None:
        import SimpleITK

        self.sitk = SimpleITK
        self.version = SimpleITK.Version_VersionString()
        self.threads = int(SimpleITK.ProcessObject.GetGlobalDefaultNumberOfThreads())
        self.settings = {
            "metric": "MattesMutualInformation(numberOfHistogramBins=32)",
            "sampling": f"RANDOM, seed 1, per level at least {self.MIN_SAMPLES} of the masked fixed pixels "
                        f"(all when fewer) and at least {self.MIN_FRACTION:.0%}",
            "transform": "Euler2DTransform, CenteredTransformInitializer(GEOMETRY), centre and beam axis at (0,0)",
            "optimizer": "RegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200, "
                         "relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8), scales from physical shift",
            "pyramid": "shrink 4/2/1, smoothing sigmas 2/1/0 px",
            "interpolator": "linear",
            "masks": "fixed = frame field (edge band removed); moving = reference field when it has one",
            "fixed_moving": "fixed = frame, moving = reference",
        }

    def _image(self, pixels: np.ndarray, spacing: tuple[float, float], axis: tuple[float, float]) -> Any:
        img = self.sitk.GetImageFromArray(pixels)
        img.SetSpacing((spacing[1], spacing[0]))
        img.SetOrigin(physical_origin(spacing, axis))
        return img

    def prepare(self, case: Case) -> Any:
        ref = case.reference
        moving = self._image(ref.pixels, ref.spacing_mm, ref.beam_axis_px)
        mask = case.mask("reference")
        moving_mask = None
        if mask is not None:
            moving_mask = self._image(mask.astype(np.uint8), ref.spacing_mm, ref.beam_axis_px)
        return moving, moving_mask

    def register(self, state: Any, case: Case) -> Outcome:
        sitk = self.sitk
        moving, moving_mask = state
        fr = case.frame
        fixed = self._image(fr.pixels, fr.spacing_mm, fr.beam_axis_px)
        mask = case.mask("frame")
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentagePerLevel(self._sampling(fr.shape, mask), 1)
        if mask is not None:
            reg.SetMetricFixedMask(self._image(mask.astype(np.uint8), fr.spacing_mm, fr.beam_axis_px))
        if moving_mask is not None:
            reg.SetMetricMovingMask(moving_mask)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                     relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(list(self.SHRINK))
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler2DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.GEOMETRY)
        reg.SetInitialTransform(init, inPlace=False)
        final = reg.Execute(fixed, moving)
        matrix, offset = _transform_affine(final)
        pose = pose_from_affine_mm(matrix, offset, "frame_to_ref")
        return Outcome(pose, True, "", {"metric": reg.GetMetricValue(), "iterations": reg.GetOptimizerIteration(),
                                        "stop": reg.GetOptimizerStopConditionDescription()})


def _transform_affine(transform: Any) -> tuple[np.ndarray, np.ndarray]:
    """Affine ``(M, t)`` of any 2-D SimpleITK transform, read by mapping three points."""
    o = np.array(transform.TransformPoint((0.0, 0.0)))
    ex = np.array(transform.TransformPoint((1.0, 0.0))) - o
    ey = np.array(transform.TransformPoint((0.0, 1.0))) - o
    return np.column_stack([ex, ey]), o


# --- itk-elastix ----------------------------------------------------------------------------------


class ElastixMethod(Method):
    """elastix (itk-elastix): EulerTransform, AdvancedMattesMutualInformation, 3 resolutions, masks."""

    name = "elastix"
    description = "itk-elastix: rigid EulerTransform, AdvancedMattesMutualInformation (32 bins)"

    def _import(self) -> None:
        import importlib.metadata

        import itk

        self.itk = itk
        self.version = importlib.metadata.version("itk-elastix")
        po = itk.ParameterObject.New()
        pm = po.GetDefaultParameterMap("rigid", 3)
        pm["Metric"] = ["AdvancedMattesMutualInformation"]
        pm["NumberOfHistogramBins"] = ["32"]
        pm["FixedImagePyramidSchedule"] = ["4", "4", "2", "2", "1", "1"]
        pm["MovingImagePyramidSchedule"] = ["4", "4", "2", "2", "1", "1"]
        pm["AutomaticTransformInitialization"] = ["true"]
        pm["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
        pm["ErodeMask"] = ["false"]
        pm["WriteResultImage"] = ["false"]
        pm["ResultImageFormat"] = ["nii"]
        po.AddParameterMap(pm)
        self.parameters = po
        self.threads = int(itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads())
        full = {k: list(v) for k, v in dict(pm).items()}
        keys = ("Transform", "Metric", "NumberOfHistogramBins", "NumberOfResolutions", "FixedImagePyramidSchedule",
                "Optimizer", "MaximumNumberOfIterations", "ImageSampler", "NumberOfSpatialSamples",
                "NewSamplesEveryIteration", "AutomaticTransformInitializationMethod", "AutomaticScalesEstimation",
                "Interpolator")
        self.settings = {k: " ".join(full[k]) for k in keys if k in full}
        self.settings["fixed_moving"] = "fixed = frame, moving = reference; masks as for SimpleITK"
        self.settings["parameter_map"] = full

    def _image(self, pixels: np.ndarray, spacing: tuple[float, float], axis: tuple[float, float]) -> Any:
        img = self.itk.image_from_array(np.ascontiguousarray(pixels))
        img.SetSpacing((float(spacing[1]), float(spacing[0])))
        img.SetOrigin(physical_origin(spacing, axis))
        return img

    def prepare(self, case: Case) -> Any:
        ref = case.reference
        moving = self._image(ref.pixels.astype(np.float32), ref.spacing_mm, ref.beam_axis_px)
        mask = case.mask("reference")
        moving_mask = None if mask is None else self._image(mask.astype(np.uint8), ref.spacing_mm, ref.beam_axis_px)
        return moving, moving_mask

    def register(self, state: Any, case: Case) -> Outcome:
        moving, moving_mask = state
        fr = case.frame
        fixed = self._image(fr.pixels.astype(np.float32), fr.spacing_mm, fr.beam_axis_px)
        kwargs: dict[str, Any] = {"parameter_object": self.parameters, "log_to_console": False}
        mask = case.mask("frame")
        if mask is not None:
            kwargs["fixed_mask"] = self._image(mask.astype(np.uint8), fr.spacing_mm, fr.beam_axis_px)
        if moving_mask is not None:
            kwargs["moving_mask"] = moving_mask
        _, params = self.itk.elastix_registration_method(fixed, moving, **kwargs)
        p = [float(v) for v in params.GetParameter(0, "TransformParameters")]
        c = np.array([float(v) for v in params.GetParameter(0, "CenterOfRotationPoint")])
        angle, t = p[0], np.array(p[1:3])
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        # elastix EulerTransform: T(x) = R (x - c) + c + t, fixed (frame) -> moving (reference)
        pose = pose_from_affine_mm(rot, t + c - rot @ c, "frame_to_ref")
        return Outcome(pose)


# --- OpenCV ECC -----------------------------------------------------------------------------------


def _common_grid_reference(case: Case) -> np.ndarray:
    """The reference on the frame's pixel grid (identity pose); the reference itself when grids agree."""
    ref, fr = case.reference, case.frame
    same = (ref.shape == fr.shape
            and np.allclose(ref.spacing_mm, fr.spacing_mm, rtol=1e-3)
            and np.allclose(ref.beam_axis_px, fr.beam_axis_px, atol=1e-3))
    if same:
        return ref.pixels
    from scipy import ndimage

    rows, cols = fr.shape
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float64)
    x, y = fr.pixel_to_mm(cc, rr)
    rc, rr2 = ref.mm_to_pixel(x, y)
    return ndimage.map_coordinates(ref.pixels, [rr2, rc], order=1, mode="nearest").astype(np.float32)


def _attenuation_view(case: Case, pixels: np.ndarray) -> np.ndarray:
    """``-log`` of an MV frame compared with a kV DRR, so that both have bone bright; else as is."""
    if case.reference.info.kind == "drr" and case.frame.info.kind == "portal" and case.family == "drr":
        top = float(np.percentile(pixels, 99.9))
        return (-np.log(np.maximum(pixels, 1e-4 * top) / top)).astype(np.float32)
    return pixels.astype(np.float32, copy=False)


class ECCMethod(Method):
    """OpenCV ``findTransformECC`` (MOTION_EUCLIDEAN) inside a 4/2/1 pyramid written here."""

    name = "opencv-ecc"
    description = "OpenCV findTransformECC, MOTION_EUCLIDEAN, pyrDown pyramid 4/2/1, frame field mask"
    LEVELS = 3

    def _import(self) -> None:
        import cv2

        self.cv2 = cv2
        self.version = cv2.__version__
        self.threads = int(cv2.getNumThreads())
        self.criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
        # OpenCV >= 4.12 can mask the template too (needed when the reference has a field edge)
        self.with_mask = hasattr(cv2, "findTransformECCWithMask")
        self.settings = {
            "motion": "MOTION_EUCLIDEAN",
            "pyramid": "cv2.pyrDown x2 (factors 4/2/1); translation doubled between levels",
            "criteria": "EPS|COUNT, 100 iterations, eps 1e-6 per level",
            "gaussFiltSize": 5,
            "template_input": "template = reference (on the frame grid), input = frame; inputMask = frame field, "
                              "templateMask = reference field (findTransformECCWithMask) when the reference has one",
            "intensity": "-log(frame) against a kV DRR; raw otherwise",
        }

    def prepare(self, case: Case) -> Any:
        ref = np.ascontiguousarray(_common_grid_reference(case), dtype=np.float32)
        ref_mask = _common_grid_mask(case)
        # Crop to the masked region: ECC's rotation Jacobian is taken about the template's pixel (0, 0), and a
        # small field far from it (a Winston-Lutz field in a 1280x1280 image) leaves the Gauss-Newton system
        # singular (NaN). The input keeps a margin for the capture range.
        box = _mask_box(case)
        fr = case.frame
        if box is None:
            tmpl_box = inp_box = (0, fr.shape[0], 0, fr.shape[1])
        else:
            tmpl_box = box
            reach = int(math.ceil(20.0 / min(fr.spacing_mm)))
            r0, r1, c0, c1 = box
            inp_box = (max(r0 - reach, 0), min(r1 + reach, fr.shape[0]), max(c0 - reach, 0), min(c1 + reach, fr.shape[1]))
        r0, r1, c0, c1 = tmpl_box
        tmpl = np.ascontiguousarray(ref[r0:r1, c0:c1])
        tmpl_mask = None if ref_mask is None else np.ascontiguousarray(ref_mask[r0:r1, c0:c1])
        return self._pyramid(tmpl, tmpl_mask), tmpl_box, inp_box

    def _pyramid(self, image: np.ndarray, mask: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray | None]]:
        cv2 = self.cv2
        levels = [(image, None if mask is None else mask.astype(np.uint8))]
        for _ in range(self.LEVELS - 1):
            img, m = levels[-1]
            small = cv2.pyrDown(img)
            if m is not None:
                m = cv2.resize(m, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_NEAREST)
            levels.append((small, m))
        return levels

    def register(self, state: Any, case: Case) -> Outcome:
        cv2 = self.cv2
        ref_pyr, tmpl_box, inp_box = state
        r0, r1, c0, c1 = inp_box
        frame = np.ascontiguousarray(_attenuation_view(case, case.frame.pixels[r0:r1, c0:c1]))
        mask = case.mask("frame")
        frame_pyr = self._pyramid(frame, None if mask is None else mask[r0:r1, c0:c1])
        # start at the identity pose: template crop pixel q sits at input crop pixel q + o_t - o_i
        o_t = np.array([tmpl_box[2], tmpl_box[0]], dtype=np.float64)
        o_i = np.array([inp_box[2], inp_box[0]], dtype=np.float64)
        warp = np.eye(2, 3, dtype=np.float32)
        warp[:, 2] = (o_t - o_i) / 2 ** (self.LEVELS - 1)
        failures = 0
        for level in range(self.LEVELS - 1, -1, -1):
            if level < self.LEVELS - 1:
                warp[:, 2] *= 2.0  # pyrDown: coarse pixel i sits on fine pixel 2i
            (tmpl, tmpl_mask), (inp, inp_mask) = ref_pyr[level], frame_pyr[level]
            try:
                if self.with_mask and tmpl_mask is not None:
                    if inp_mask is None:
                        inp_mask = np.ones(inp.shape, np.uint8)
                    _, found = cv2.findTransformECCWithMask(tmpl, inp, tmpl_mask, inp_mask, warp.copy(),
                                                            cv2.MOTION_EUCLIDEAN, self.criteria, 5)
                else:
                    _, found = cv2.findTransformECC(tmpl, inp, warp.copy(), cv2.MOTION_EUCLIDEAN, self.criteria,
                                                    inp_mask, 5)
                warp = found  # the matrix passed in is left with NaN on failure, so always pass a copy
            except cv2.error as exc:
                failures += 1
                if level == 0:
                    return Outcome(Pose(float("nan"), float("nan"), float("nan")), False,
                                   f"findTransformECC failed: {str(exc).strip().splitlines()[-1]}")
        # warp: template (reference crop) pixel -> input (frame crop) pixel; back to whole-image pixels:
        # p = A (q - o_t) + b + o_i
        a = warp[:, :2].astype(np.float64)
        b = warp[:, 2].astype(np.float64) + o_i - a @ o_t
        fr = case.frame
        m, t = affine_px_to_mm(a, b, fr.spacing_mm, fr.beam_axis_px, fr.spacing_mm, fr.beam_axis_px)
        return Outcome(pose_from_affine_mm(m, t, "ref_to_frame"), True, "", {"coarse_failures": failures})


def _common_grid_mask(case: Case) -> np.ndarray | None:
    """The reference's field mask on the frame's pixel grid (nearest neighbour); None without a field."""
    mask = case.mask("reference")
    if mask is None:
        return None
    ref, fr = case.reference, case.frame
    if mask.shape == fr.shape and np.allclose(ref.spacing_mm, fr.spacing_mm, rtol=1e-3) \
            and np.allclose(ref.beam_axis_px, fr.beam_axis_px, atol=1e-3):
        return mask
    from scipy import ndimage

    rows, cols = fr.shape
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float64)
    x, y = fr.pixel_to_mm(cc, rr)
    rc, rr2 = ref.mm_to_pixel(x, y)
    return ndimage.map_coordinates(mask.astype(np.uint8), [rr2, rc], order=0, mode="constant").astype(bool)


# --- scikit-image phase correlation ---------------------------------------------------------------


class PhaseCorrelationMethod(Method):
    """scikit-image ``phase_cross_correlation`` (translation only, upsample_factor=20)."""

    name = "skimage-pcc"
    description = "scikit-image phase_cross_correlation, upsample_factor=20, translation only (rotation 0)"

    def _import(self) -> None:
        import skimage
        from skimage.registration import phase_cross_correlation

        self.pcc = phase_cross_correlation
        self.version = skimage.__version__
        self.threads = 1
        self.settings = {
            "upsample_factor": 20,
            "window": "mean removed, separable Hann window on both images",
            "normalization": "phase (the default)",
            "rotation": "not estimated (reported 0)",
            "field": "both images cropped to the bounding box of the field mask(s), so the field edge is not matched",
            "intensity": "-log(frame) against a kV DRR; raw otherwise",
        }

    def prepare(self, case: Case) -> Any:
        return _common_grid_reference(case)

    def register(self, state: Any, case: Case) -> Outcome:
        ref = state
        frame = _attenuation_view(case, case.frame.pixels)
        box = _mask_box(case)
        if box is not None:
            r0, r1, c0, c1 = box
            ref = ref[r0:r1, c0:c1]
            frame = frame[r0:r1, c0:c1]
        # a Hann window on mean-free images: without it the image borders (shared, static) win the correlation
        # a Hann window on mean-free images: without it the image borders (static) win the correlation
        window = np.outer(np.hanning(ref.shape[0]), np.hanning(ref.shape[1])).astype(np.float32)
        ref = (ref - ref.mean()) * window
        frame = (frame - frame.mean()) * window
        shift, _, _ = self.pcc(ref, frame, upsample_factor=20)
        # the shift moves the frame onto the reference: frame(p) = ref(p - d)  =>  shift = -d
        fr = case.frame
        m, t = affine_px_to_mm(np.eye(2), np.array([-shift[1], -shift[0]]), fr.spacing_mm, fr.beam_axis_px,
                               fr.spacing_mm, fr.beam_axis_px)
        return Outcome(pose_from_affine_mm(m, t, "ref_to_frame"))


def _mask_box(case: Case) -> tuple[int, int, int, int] | None:
    mask = case.mask("frame")
    if mask is None:
        return None
    ref_mask = case.mask("reference")
    if ref_mask is not None and ref_mask.shape == mask.shape:
        mask = mask & ref_mask
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size < 8 or cols.size < 8:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


#: Peers by name, in the order they appear in tables.
PEERS: dict[str, type[Method]] = {
    "simpleitk": SimpleITKMethod,
    "elastix": ElastixMethod,
    "opencv-ecc": ECCMethod,
    "skimage-pcc": PhaseCorrelationMethod,
}


def make_methods(peers: list[str], *, gpu: bool = True) -> list[Method]:
    """portalign CPU (and GPU when asked) followed by the named peers, not yet started."""
    methods: list[Method] = [PortalignMethod("cpu")]
    if gpu:
        methods.append(PortalignMethod("gpu"))
    for name in peers:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
        methods.append(PEERS[name]())
    return methods
