"""Image preprocessing: a frozen, serialisable specification plus the code that applies it.

A :class:`Preprocess` says how a decoded image becomes a model input. It is pure data (JSON via
:meth:`Preprocess.to_dict`), so calibration sidecars can record exactly which preprocessing
produced the statistics, and :meth:`Preprocess.digest` gives a stable sha256 to compare two runs.

Order of operations (fixed, documented here once):

1. decode; EXIF orientation applied (``ImageOps.exif_transpose``);
2. colour conversion to RGB (or L for 1-channel inputs): palette and 16-bit images are converted
   (16-bit values are scaled to 8 bits, ``v / 257``); **alpha is composited on white**
   (transparent areas of a PNG become white paper, not black);
3. geometry, by ``resize_mode``:

   ``shorter``   shorter side -> ``resize`` keeping aspect (torchvision ``Resize(int)``), then
                 centre ``crop``;
   ``exact``     resize to ``resize`` (int or (h, w)) ignoring aspect;
   ``letterbox`` fit inside ``resize`` keeping aspect, centred on a ``fill`` (0..255) canvas
                 (YOLO / Ultralytics);
   ``height``    height -> ``resize`` keeping aspect; with ``max_width`` the width is capped
                 and the image padded on the right to ``max_width`` (PaddleOCR rec / cls);
   ``multiple``  shorter side -> ``resize``, then each side rounded to a multiple of
                 ``multiple`` (PaddleOCR det, 32);
   ``none``      no resize (``crop`` still applies);

   when the model input has a fixed spatial size, that size wins where the spec leaves it open
   (no crop / no size); a spec that contradicts it is an error, raised before any image is read;
   no image may grow past ``MAX_SAMPLE_PIXELS`` here (an image that would is a corrupt sample,
   a spec or model size that would is refused before any image is read);
4. to float32, channels swapped to BGR if ``bgr``;
5. ``x = (pixel * scale - mean) / std`` with **mean and std given in RGB order** (as papers
   and model cards publish them) and applied to the matching channel whatever ``bgr`` says;
6. layout (``nchw`` / ``nhwc``) and dtype (both follow the model input unless set).

Padding added after normalisation (``height`` with ``max_width``, and batching of images whose
sizes differ) uses 0, as PaddleOCR does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CorruptSampleError, PreprocessError, first_line

RESIZE_MODES = ("shorter", "exact", "letterbox", "height", "multiple", "none")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box")
LAYOUTS = ("nchw", "nhwc")
FORMAT_VERSION = 1

# The most pixels one image may have after the geometry step (resize, letterbox canvas, crop):
# 4096 x 4096, room for a 3840 x 2160 frame twice over, and 192 MiB as a float32 RGB sample. An
# image that would grow past it (a 100000 x 1 PNG resized to a shorter side of 256 would be
# 25.6M x 256) is a corrupt sample: skipped and counted, an error with strict; a preprocessing
# spec or a fixed model input size that asks for more is refused before any image is read.
MAX_SAMPLE_PIXELS = 4096 * 4096

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (description, field values). Values not named take the dataclass defaults.
PRESETS: dict[str, tuple[str, dict]] = {
    "torchvision": ("RGB, bilinear shorter side 256, centre crop 224, /255, ImageNet mean/std",
                    dict(resize=256, crop=224, interp="bilinear", scale=1 / 255,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)),
    "caffe": ("BGR, bilinear shorter side 256, centre crop 224, 0..255 minus mean (R 123, G 117, B 104)",
              dict(resize=256, crop=224, interp="bilinear", scale=1.0, mean=(123.0, 117.0, 104.0),
                   bgr=True)),
    "efficientnet-lite": ("RGB, bicubic shorter side 256, centre crop 224, (x - 127) / 128",
                          dict(resize=256, crop=224, interp="bicubic", scale=1.0, mean=(127.0,),
                               std=(128.0,))),
    "paddleocr": ("PaddleOCR rec: BGR, height 48 keeping aspect, (x/255 - 0.5) / 0.5",
                  dict(resize_mode="height", resize=48, interp="bilinear", scale=1 / 255,
                       mean=(0.5,), std=(0.5,), bgr=True)),
    "paddleocr-rec": ("same as paddleocr",
                      dict(resize_mode="height", resize=48, interp="bilinear", scale=1 / 255,
                           mean=(0.5,), std=(0.5,), bgr=True)),
    "paddleocr-cls": ("PaddleOCR direction classifier: BGR, height 48, width capped and padded to 192",
                      dict(resize_mode="height", resize=48, max_width=192, interp="bilinear",
                           scale=1 / 255, mean=(0.5,), std=(0.5,), bgr=True)),
    "paddleocr-det": ("PaddleOCR det: BGR, shorter side 736, sides rounded to multiples of 32",
                      dict(resize_mode="multiple", resize=736, multiple=32, interp="bilinear",
                           scale=1 / 255, mean=(0.5,), std=(0.5,), bgr=True)),
    "yolo": ("RGB, letterbox (grey 114) to the model size (640 if dynamic), 0..1",
             dict(resize_mode="letterbox", resize=None, interp="bilinear", scale=1 / 255, fill=114)),
    "mnist": ("1 channel, resize to the model size (28x28), 0..255 / 255",
              dict(resize_mode="exact", interp="bilinear", scale=1 / 255, channels=1)),
    "grayscale": ("1 channel, resize to the model size, 0..1",
                  dict(resize_mode="exact", interp="bilinear", scale=1 / 255, channels=1)),
    "raw": ("resize to the model size, pixels 0..255 as they are",
            dict(resize_mode="exact", interp="bilinear", scale=1.0)),
}
PRESET_ALIASES = {"imagenet": "torchvision", "pytorch": "torchvision", "efficientnet_lite": "efficientnet-lite",
                  "ultralytics": "yolo", "gray": "grayscale"}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def _size(value, what: str):
    """int, (h, w) or None; accepts "224", "224x192", lists."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise PreprocessError(f"{what}: expected N or HxW, got {value!r}") from None
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = value[0]
        elif len(value) == 2:
            h, w = (int(v) for v in value)
            if h <= 0 or w <= 0:
                raise PreprocessError(f"{what}: sizes must be positive, got {value!r}")
            return (h, w) if h != w else h
        else:
            raise PreprocessError(f"{what}: expected N or (H, W), got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise PreprocessError(f"{what}: expected a positive integer, got {value!r}")
    return int(value)


def _floats(value, what: str):
    if value is None:
        return None
    if isinstance(value, str):
        return parse_floats(value, what)
    if isinstance(value, (int, float, np.number)):
        value = (value,)
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise PreprocessError(f"{what}: expected 1 or 3 numbers, got {value!r}") from None
    if len(vals) not in (1, 3) or not all(math.isfinite(v) for v in vals):
        raise PreprocessError(f"{what}: expected 1 or 3 finite numbers, got {value!r}")
    return vals


def parse_floats(text: str, what: str = "--mean") -> tuple[float, ...]:
    """Parse ``"a,b,c"`` (or one number) as used by ``--mean`` / ``--std``."""
    try:
        vals = tuple(float(p) for p in str(text).replace(" ", "").split(","))
    except ValueError:
        raise PreprocessError(f"{what}: expected 1 or 3 comma-separated numbers like 0.485,0.456,0.406, "
                              f"got {text!r}") from None
    if len(vals) not in (1, 3) or not all(math.isfinite(v) for v in vals):
        raise PreprocessError(f"{what}: expected 1 or 3 comma-separated numbers like 0.485,0.456,0.406, "
                              f"got {text!r}")
    return vals


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input (see the module docstring for the exact order).

    Build one with :meth:`preset` (``Preprocess.preset("caffe", resize=256)``) or directly.
    ``layout``, ``dtype`` and ``channels`` default to ``None``: follow the model input.
    """

    resize: Any = None                 # int (shorter side / square) or (h, w); None: from the model
    resize_mode: str = "shorter"
    crop: Any = None                   # centre crop: int or (h, w)
    interp: str = "bilinear"
    scale: float = 1.0
    mean: tuple | None = None          # RGB order
    std: tuple | None = None           # RGB order
    bgr: bool = False
    layout: str | None = None          # "nchw" | "nhwc" | None (follow the model)
    dtype: str | None = None           # numpy dtype name | None (follow the model)
    channels: int | None = None        # 1 | 3 | None (follow the model)
    max_width: int | None = None       # "height" mode: cap the width and pad to it
    multiple: int = 32                 # "multiple" mode
    fill: int = 114                    # "letterbox" canvas value (0..255)
    name: str | None = field(default=None, compare=False)   # preset it came from (not in digest)

    def __post_init__(self):
        s = object.__setattr__
        if self.resize_mode not in RESIZE_MODES:
            raise PreprocessError(f"resize mode {self.resize_mode!r} unknown; use one of {', '.join(RESIZE_MODES)}")
        s(self, "resize", _size(self.resize, "resize"))
        s(self, "crop", _size(self.crop, "crop"))
        if self.interp not in INTERPOLATIONS:
            raise PreprocessError(f"interpolation {self.interp!r} unknown; use one of {', '.join(INTERPOLATIONS)}")
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            raise PreprocessError(f"scale: expected a number, got {self.scale!r}") from None
        if not math.isfinite(scale) or scale == 0:
            raise PreprocessError(f"scale must be a finite non-zero number, got {self.scale!r}")
        s(self, "scale", scale)
        s(self, "mean", _floats(self.mean, "mean"))
        s(self, "std", _floats(self.std, "std"))
        if self.std is not None and any(v == 0 for v in self.std):
            raise PreprocessError(f"std must not contain 0, got {self.std}")
        s(self, "bgr", bool(self.bgr))
        if self.layout is not None:
            lay = str(self.layout).lower()
            if lay not in LAYOUTS:
                raise PreprocessError(f"layout {self.layout!r} unknown; use nchw or nhwc")
            s(self, "layout", lay)
        if self.dtype is not None:
            try:
                s(self, "dtype", np.dtype(self.dtype).name)
            except TypeError:
                raise PreprocessError(f"dtype {self.dtype!r} is not a NumPy dtype") from None
        if self.channels is not None and self.channels not in (1, 3):
            raise PreprocessError(f"channels must be 1 or 3, got {self.channels!r}")
        if self.max_width is not None:
            s(self, "max_width", _size(self.max_width, "max_width"))
        s(self, "multiple", _size(self.multiple, "multiple"))
        if not 0 <= int(self.fill) <= 255:
            raise PreprocessError(f"fill must be 0..255, got {self.fill!r}")
        s(self, "fill", int(self.fill))
        if self.resize_mode in ("height", "multiple") and isinstance(self.resize, tuple):
            raise PreprocessError(f"resize mode {self.resize_mode!r} takes one number, got {self.resize}")

    # -- construction --------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> Preprocess:
        """A named preset, with any field overridden (``Preprocess.preset("caffe", resize=256)``)."""
        key = PRESET_ALIASES.get(str(name).lower(), str(name).lower())
        if key not in PRESETS:
            raise PreprocessError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise PreprocessError(f"unknown preprocessing field(s) {', '.join(bad)}; "
                                  f"fields are {', '.join(sorted(fields - {'name'}))}")
        values = dict(PRESETS[key][1])
        values.update(overrides)
        values["name"] = key
        return cls(**values)

    def replace(self, **changes) -> Preprocess:
        return dataclasses.replace(self, **changes)

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"format": "calib-preprocess", "version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        if not isinstance(d, dict):
            raise PreprocessError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        fmt, ver = d.pop("format", "calib-preprocess"), d.pop("version", FORMAT_VERSION)
        if fmt != "calib-preprocess" or ver != FORMAT_VERSION:
            raise PreprocessError(f"unsupported preprocessing format {fmt!r} version {ver!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - fields)
        if bad:
            raise PreprocessError(f"unknown preprocessing field(s) {', '.join(bad)}")
        return cls(**d)

    def digest(self) -> str:
        """sha256 of the canonical JSON of every field that changes the output (not ``name``)."""
        d = self.to_dict()
        d.pop("name", None)
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def describe(self) -> str:
        parts = [self.name or "custom", f"{self.resize_mode}"]
        if self.resize is not None:
            parts.append(f"resize={self.resize}")
        if self.crop is not None:
            parts.append(f"crop={self.crop}")
        parts.append(self.interp)
        parts.append(f"scale={self.scale:g}")
        if self.mean:
            parts.append("mean=" + ",".join(f"{v:g}" for v in self.mean))
        if self.std:
            parts.append("std=" + ",".join(f"{v:g}" for v in self.std))
        if self.bgr:
            parts.append("BGR")
        return " ".join(parts)


# ---------------------------------------------------------------------------
# Applying a Preprocess to one image for one model input
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePlan:
    """A :class:`Preprocess` resolved against one model input: everything concrete."""

    pre: Preprocess
    channels: int                      # 1 or 3
    layout: str                        # "nchw" | "nhwc" | "nhw" (rank-3 grayscale input)
    dtype: np.dtype
    mode: str                          # effective resize mode
    size: tuple | None                 # (h, w) target of the resize step (shorter: (s, s))
    crop: tuple | None                 # (h, w) of the centre crop
    pad_to: tuple | None               # (h, w) final padding (height mode with a fixed width)
    gain: np.ndarray = field(repr=False, compare=False, default=None)   # per channel, output order
    bias: np.ndarray = field(repr=False, compare=False, default=None)


def _pair(v):
    return None if v is None else (v if isinstance(v, tuple) else (v, v))


def make_plan(pre: Preprocess, tinfo) -> ImagePlan:
    """Resolve *pre* against the model input *tinfo* (a ``TensorInfo``); raise on contradictions."""
    from ..errors import InputMismatchError

    shape = tuple(tinfo.shape)
    name = tinfo.name
    if len(shape) == 4:
        c1, c3 = shape[1], shape[3]
        layout = pre.layout
        if layout is None:
            if c1 in (1, 3):
                layout = "nchw"
            elif c3 in (1, 3):
                layout = "nhwc"
            else:
                layout = "nchw"
        cdim = shape[1] if layout == "nchw" else shape[3]
        hdim, wdim = (shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])
        if isinstance(cdim, int) and cdim not in (1, 3):
            raise InputMismatchError(f"input '{name}' {shape}: {cdim} channels in {layout} layout cannot hold an "
                                     f"image (1 or 3); use HDF5/NumPy data or set --layout")
        channels = cdim if isinstance(cdim, int) else (pre.channels or 3)
        if pre.channels is not None and pre.channels != channels:
            raise InputMismatchError(f"preprocessing gives {pre.channels} channel(s) but model input '{name}' "
                                     f"{shape} takes {channels}")
    elif len(shape) == 3:
        layout, channels = "nhw", 1
        hdim, wdim = shape[1], shape[2]
        if pre.channels not in (None, 1):
            raise InputMismatchError(f"model input '{name}' {shape} has no channel axis (grayscale) but "
                                     f"preprocessing gives {pre.channels} channels")
    else:
        raise InputMismatchError(f"model input '{name}' has shape {shape}; images need rank 4 (N,C,H,W / N,H,W,C) "
                                 f"or rank 3 (N,H,W); use HDF5/NumPy data or a loader script")
    fixed = (hdim, wdim) if isinstance(hdim, int) and isinstance(wdim, int) else None
    fixed_h = hdim if isinstance(hdim, int) else None
    fixed_w = wdim if isinstance(wdim, int) else None
    dtype = np.dtype(pre.dtype) if pre.dtype else np.dtype(tinfo.dtype)
    if dtype.kind not in "fiu":
        raise InputMismatchError(f"model input '{name}' has dtype {dtype.name}; images need a float or integer input")

    mode = pre.resize_mode
    size = _pair(pre.resize)
    crop = _pair(pre.crop)
    pad_to = None
    out = None

    def mismatch(what, got):
        return InputMismatchError(f"preprocessing {what} gives {got[0]}x{got[1]} images but model input '{name}' "
                                  f"{shape} needs {fixed[0]}x{fixed[1]}; change --crop/--resize or the preset")

    if mode == "shorter":
        if crop is not None:
            out = crop
            if size is None:
                size = (max(crop),) * 2
        elif fixed is not None:
            if size is None:
                mode, size = "exact", fixed
            else:
                crop = fixed
            out = fixed
        if isinstance(pre.resize, tuple):
            mode = "exact"          # shorter side with two numbers means an exact size
            if crop is None:
                out = size
    elif mode in ("exact", "letterbox"):
        if size is None:
            size = fixed if fixed is not None else ((640, 640) if mode == "letterbox" else None)
        out = crop or size
        if size is None:
            out = crop
            mode = "none"
    elif mode == "height":
        h = pre.resize or fixed_h
        if h is None:
            raise PreprocessError(f"resize mode 'height' needs a height (resize=48) for model input '{name}' {shape}")
        size = (h, pre.max_width or fixed_w or 0)
        maxw = pre.max_width or fixed_w
        if maxw:
            pad_to = (h, maxw)
            out = (h, maxw)
        if crop is not None:
            raise InputMismatchError("resize mode 'height' does not take a crop")
        if fixed_h is not None and fixed_h != h:
            raise InputMismatchError(f"preprocessing height {h} does not fit model input '{name}' {shape}")
    elif mode == "multiple":
        if fixed is not None:
            mode, size, out = "exact", fixed, fixed
        elif size is None:
            size = (736, 736)
    elif mode == "none":
        if crop is not None:
            out = crop
        elif fixed is not None:
            mode, size, out = "exact", fixed, fixed

    if fixed is not None:
        if out is None:
            # still open (e.g. "none" without crop): the model decides
            crop = fixed
            out = fixed
        if tuple(out) != tuple(fixed):
            what = f"crop {out[0]}x{out[1]}" if crop else f"{mode} resize"
            raise mismatch(what, out)
    if out is not None:
        if fixed_h is not None and out[0] != fixed_h or fixed_w is not None and out[1] != fixed_w:
            raise InputMismatchError(f"preprocessing gives {out[0]}x{out[1]} images but model input '{name}' "
                                     f"{shape} does not take that size")

    _check_plan_pixels(name, shape, fixed, mode, size, crop, pad_to)

    # per-channel affine in output channel order: x * gain + bias
    mean = np.array(pre.mean if pre.mean else (0.0,), dtype=np.float64)
    std = np.array(pre.std if pre.std else (1.0,), dtype=np.float64)
    if channels == 1:
        if len(mean) == 3:
            mean = np.array([mean.mean()])
        if len(std) == 3:
            std = np.array([std.mean()])
    else:
        mean = np.broadcast_to(mean, (3,)).copy()
        std = np.broadcast_to(std, (3,)).copy()
        if pre.bgr:
            mean, std = mean[::-1].copy(), std[::-1].copy()
    gain = (pre.scale / std).astype(np.float32)
    bias = (-mean / std).astype(np.float32)
    return ImagePlan(pre=pre, channels=channels, layout=layout, dtype=dtype, mode=mode, size=size,
                     crop=crop, pad_to=pad_to, gain=gain, bias=bias)


def _check_plan_pixels(name, shape, fixed, mode, size, crop, pad_to) -> None:
    """Refuse a plan whose images would exceed :data:`MAX_SAMPLE_PIXELS` whatever their size."""
    steps = []     # (what, (h, w)): sizes every image reaches at least
    if size is not None and mode in ("shorter", "multiple"):
        steps.append(("resize", (size[0], size[0])))
    elif size is not None and mode in ("exact", "letterbox"):
        steps.append(("resize", size))
    elif size is not None and mode == "height":
        steps.append(("resize", (size[0], 1)))
    for what, hw in (("crop", crop), ("padding", pad_to)):
        if hw is not None:
            steps.append((what, hw))
    for what, (h, w) in steps:
        if h * w > MAX_SAMPLE_PIXELS:
            model_size = fixed is not None and tuple(fixed) == (h, w)
            why = (f"model input '{name}' {tuple(shape)} takes {h}x{w} images" if model_size
                   else f"the {what} makes images of at least {h}x{w} pixels")
            raise PreprocessError(f"{why}: more than the {MAX_SAMPLE_PIXELS} pixels (4096x4096) a sample may have")


def _check_pixels(w: int, h: int, nw: int, nh: int) -> None:
    """An image of w x h that the geometry step would make nw x nh: a corrupt sample past the bound."""
    if nw * nh > MAX_SAMPLE_PIXELS:
        raise CorruptSampleError(f"a {w}x{h} image would become {nw}x{nh} pixels after resizing, more than the "
                                 f"{MAX_SAMPLE_PIXELS} (4096x4096) a sample may have")


_RESAMPLE = None


def _resample(name: str):
    global _RESAMPLE
    if _RESAMPLE is None:
        from PIL import Image
        R = Image.Resampling
        _RESAMPLE = {"nearest": R.NEAREST, "bilinear": R.BILINEAR, "bicubic": R.BICUBIC,
                     "lanczos": R.LANCZOS, "box": R.BOX}
    return _RESAMPLE[name]


def _to_8bit(im):
    """Convert 16/32-bit integer and float images to 8-bit "L" by value scaling (not clipping)."""
    from PIL import Image

    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        hi = float(np.nanmax(a)) if a.size else 1.0
        a = a * 255.0 if hi <= 1.0 else a
    else:
        a = a.astype(np.float64)
        hi = float(a.max()) if a.size else 0
        a = a / 257.0 if hi > 255 or im.mode.startswith("I;16") else a
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def to_mode(im, channels: int):
    """RGB (or L) 8-bit image from any Pillow mode; alpha composited on white."""
    from PIL import Image

    mode = im.mode
    target = "RGB" if channels == 3 else "L"
    if mode == target:
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
        mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _to_8bit(im)
        mode = "L"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba).convert("RGB")
        mode = "RGB"
    return im if im.mode == target else im.convert(target)


def _centre_box(w: int, h: int, cw: int, ch: int):
    # torchvision CenterCrop rounding
    left = int(round((w - cw) / 2.0))
    top = int(round((h - ch) / 2.0))
    return left, top


def geometry(im, plan: ImagePlan):
    """Apply the resize/crop/letterbox step to a PIL image; returns a PIL image."""
    from PIL import Image

    pre = plan.pre
    rs = _resample(pre.interp)
    w, h = im.size
    mode = plan.mode
    if mode == "shorter" and plan.size is not None:
        s = plan.size[0]
        if w <= h:
            nw, nh = s, int(s * h / w)
        else:
            nh, nw = s, int(s * w / h)
        if (nw, nh) != (w, h):
            _check_pixels(w, h, max(1, nw), max(1, nh))
            im = im.resize((max(1, nw), max(1, nh)), rs)
    elif mode == "exact":
        th, tw = plan.size
        if (tw, th) != (w, h):
            im = im.resize((tw, th), rs)
    elif mode == "letterbox":
        th, tw = plan.size
        r = min(th / h, tw / w)
        nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), rs)
        fill = (pre.fill,) * (3 if im.mode == "RGB" else 1)
        canvas = Image.new(im.mode, (tw, th), fill if len(fill) > 1 else fill[0])
        left = int(round((tw - nw) / 2 - 0.1))
        top = int(round((th - nh) / 2 - 0.1))
        canvas.paste(im, (left, top))
        im = canvas
    elif mode == "height":
        th = plan.size[0]
        nw = max(1, int(math.ceil(th * w / h)))
        if plan.pad_to is not None:
            nw = min(nw, plan.pad_to[1])
        if (nw, th) != (w, h):
            _check_pixels(w, h, nw, th)
            im = im.resize((nw, th), rs)
    elif mode == "multiple":
        s = plan.size[0]
        m = pre.multiple
        r = s / min(w, h)
        nh = max(m, int(round(h * r / m)) * m)
        nw = max(m, int(round(w * r / m)) * m)
        if (nw, nh) != (w, h):
            _check_pixels(w, h, nw, nh)
            im = im.resize((nw, nh), rs)
    if plan.crop is not None:
        ch, cw = plan.crop
        w, h = im.size
        if (w, h) != (cw, ch):
            if w < cw or h < ch:   # torchvision pads small images with 0 before cropping
                canvas = Image.new(im.mode, (max(w, cw), max(h, ch)), 0)
                canvas.paste(im, (max(0, (cw - w) // 2), max(0, (ch - h) // 2)))
                im = canvas
                w, h = im.size
            left, top = _centre_box(w, h, cw, ch)
            im = im.crop((left, top, left + cw, top + ch))
    return im


def _draft_scale(plan: ImagePlan, w: int, h: int) -> float:
    """The downscale factor the geometry step will apply (1.0 if unknown or upscaling)."""
    m = plan.mode
    if plan.size is None:
        return 1.0
    if m in ("shorter", "multiple"):
        return plan.size[0] / min(w, h)
    if m in ("exact", "letterbox"):
        th, tw = plan.size
        # conservative: the larger of the two axis factors, either orientation
        return max(th / h, tw / w, th / w, tw / h) if m == "exact" else min(th / h, tw / w)
    if m == "height":
        return plan.size[0] / min(w, h)
    return 1.0


def decode(path, plan: ImagePlan, draft: bool = True):
    """Open, decode and orient *path*; return an RGB/L PIL image. Raises CorruptSampleError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if draft and im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
                w, h = im.size
                s = _draft_scale(plan, w, h)
                # Only let libjpeg drop resolution while at least 2x the final size remains, so the
                # antialiasing resize still does the real work (keeps accuracy).
                if s < 0.5:
                    im.draft(im.mode, (int(math.ceil(w * s * 2)), int(math.ceil(h * s * 2))))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return to_mode(im, plan.channels)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError,
            EOFError, MemoryError) as exc:
        reason = first_line(exc)
        raise CorruptSampleError(f"cannot decode image {path}: {reason}") from None


def to_array(im, plan: ImagePlan) -> np.ndarray:
    """PIL image (after geometry) -> normalised array in the plan's layout and dtype."""
    a = np.asarray(im)
    if a.ndim == 2:
        a = a[:, :, None]
    if plan.pre.bgr and a.shape[2] == 3:
        a = a[:, :, ::-1]
    if plan.layout == "nchw":
        a = a.transpose(2, 0, 1)
        x = np.empty(a.shape, dtype=np.float32)
        np.multiply(a, plan.gain[:, None, None], out=x, casting="unsafe")
        x += plan.bias[:, None, None]
    else:
        x = np.empty(a.shape, dtype=np.float32)
        np.multiply(a, plan.gain, out=x, casting="unsafe")
        x += plan.bias
        if plan.layout == "nhw":
            x = x[:, :, 0]
    if plan.pad_to is not None:
        x = pad_sample(x, plan.layout, plan.pad_to)
    if plan.dtype != np.float32:
        if plan.dtype.kind in "iu":
            info = np.iinfo(plan.dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        x = x.astype(plan.dtype)
    return x


def spatial_axes(layout: str) -> tuple[int, int]:
    """Axes of H and W in a *sample* (no batch axis)."""
    return {"nchw": (1, 2), "nhwc": (0, 1), "nhw": (0, 1)}[layout]


def pad_sample(x: np.ndarray, layout: str, hw: tuple) -> np.ndarray:
    """Pad a sample with 0 at the bottom/right up to (h, w)."""
    ah, aw = spatial_axes(layout)
    ph, pw = hw[0] - x.shape[ah], hw[1] - x.shape[aw]
    if ph <= 0 and pw <= 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[ah] = (0, max(0, ph))
    widths[aw] = (0, max(0, pw))
    return np.pad(x, widths)


def load_image(path, plan: ImagePlan, draft: bool = True) -> np.ndarray:
    """Decode and preprocess one image file into a model-ready sample (no batch axis); an image
    that cannot be decoded or would exceed :data:`MAX_SAMPLE_PIXELS` raises CorruptSampleError."""
    im = decode(path, plan, draft=draft)
    try:
        im = geometry(im, plan)
    except CorruptSampleError as exc:
        raise CorruptSampleError(f"image {path}: {exc}") from None
    return to_array(im, plan)
