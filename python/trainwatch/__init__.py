"""trainwatch trainer-side publisher: a thin ctypes wrapper over libtrainwatch.so.

Standard library only, Python >= 3.8::

    from trainwatch import Publisher
    pub = Publisher("run-name", total_epochs=10, batches_per_epoch=500, batch_size=64,
                    model_name="resnet18", dataset_name="cifar10", class_names=[...])
    pub.status("RUNNING", "started")
    pub.batch(epoch=0, batch_idx=3, images=x[:16], predictions=[...], confidences=[...],
              labels=[...], loss=0.71, layout="NCHW", mean=(...), std=(...))
    pub.epoch(epoch=0, average_loss=0.52, average_accuracy=0.81)
    for command, params in pub.commands(): ...
    pub.close()

Publishing never waits on the agent. ``batch`` copies the images only when
the agent will read them soon, so calling it every batch is cheap; it returns
whether the batch was copied.
"""

import ctypes
import os
import warnings

from . import _lib
from ._lib import TrainwatchError

__all__ = ["Publisher", "TrainwatchError", "STATUSES", "COMMANDS", "DEFAULT_SHM_DIR"]

DEFAULT_SHM_DIR = "/dev/shm/trainwatch"
MAX_IMAGES = 16

STATUSES = {
    "UNKNOWN": 0,
    "INITIALIZING": 1,
    "RUNNING": 2,
    "PAUSED": 3,
    "COMPLETED": 4,
    "FAILED": 5,
}
COMMANDS = {
    1: "PAUSE_TRAINING",
    2: "RESUME_TRAINING",
    3: "STOP_TRAINING",
    4: "ADJUST_BATCH_SIZE",
    5: "CHANGE_LEARNING_RATE",
}
_DTYPES = {"u8": _lib.DTYPE_U8, "uint8": _lib.DTYPE_U8, "f32": _lib.DTYPE_F32,
           "float32": _lib.DTYPE_F32, "f16": _lib.DTYPE_F16, "float16": _lib.DTYPE_F16}
_FORMATS = {"B": _lib.DTYPE_U8, "f": _lib.DTYPE_F32, "e": _lib.DTYPE_F16}
_SIZES = {_lib.DTYPE_U8: 1, _lib.DTYPE_F32: 4, _lib.DTYPE_F16: 2}
_LAYOUTS = {"NCHW": _lib.LAYOUT_NCHW, "NHWC": _lib.LAYOUT_NHWC}


def _encode(s, what):
    if s is None:
        return None
    if not isinstance(s, str):
        raise TypeError("%s must be a str, got %r" % (what, type(s).__name__))
    return s.encode("utf-8")


def _dtype_code(dtype):
    if dtype is None:
        return None
    name = getattr(dtype, "name", None) or str(dtype)  # numpy dtype, torch dtype, str
    name = name.replace("torch.", "")
    if name not in _DTYPES:
        raise ValueError("dtype %r: expected one of u8, f32, f16" % (dtype,))
    return _DTYPES[name]


def _tensor(images, shape, dtype, layout):
    """Returns (Images struct, keepalive) for a C-contiguous view of images."""
    if hasattr(images, "detach") and hasattr(images, "numpy"):  # torch tensor
        images = images.detach()
        if getattr(images, "device", None) is not None and str(images.device) != "cpu":
            images = images.cpu()
        images = images.numpy()
    given = shape if shape is not None else getattr(images, "shape", None)
    if given is not None and len(given) >= 1 and given[0] > MAX_IMAGES and not isinstance(
        images, (bytes, bytearray, memoryview)
    ):
        images = images[:MAX_IMAGES]  # a view: copy no more than is kept
        if shape is not None:
            shape = (MAX_IMAGES,) + tuple(shape[1:])
    mv = memoryview(images)
    code = _dtype_code(dtype)
    if shape is None:
        shape = mv.shape
        fmt = mv.format.lstrip("<=@")
        if code is None:
            if fmt not in _FORMATS:
                raise ValueError(
                    "images have element format %r; expected uint8, float32 or float16 "
                    "(or pass dtype=)" % mv.format
                )
            code = _FORMATS[fmt]
    elif code is None:
        raise ValueError("images given with shape= need dtype= too")
    shape = tuple(int(d) for d in shape)
    if len(shape) == 3:  # N, H, W: grayscale
        n, h, w = shape
        c, lay = 1, _lib.LAYOUT_NHWC
    elif len(shape) == 4:
        n = shape[0]
        if layout is not None:
            if layout not in _LAYOUTS:
                raise ValueError("layout %r: expected 'NCHW' or 'NHWC'" % (layout,))
            lay = _LAYOUTS[layout]
        elif shape[1] in (1, 3) and shape[3] not in (1, 3):
            lay = _lib.LAYOUT_NCHW
        elif shape[3] in (1, 3):
            lay = _lib.LAYOUT_NHWC
        else:
            raise ValueError("cannot tell the layout of shape %r: pass layout=" % (shape,))
        if lay == _lib.LAYOUT_NCHW:
            c, h, w = shape[1], shape[2], shape[3]
        else:
            h, w, c = shape[1], shape[2], shape[3]
    else:
        raise ValueError("images shape %r: expected (N, C, H, W), (N, H, W, C) or (N, H, W)" % (shape,))
    nbytes = n * c * h * w * _SIZES[code]
    keep, ptr = None, None
    if mv.c_contiguous:
        iface = getattr(images, "__array_interface__", None)
        if iface is not None:
            keep, ptr = images, iface["data"][0]
        elif isinstance(images, bytes):
            keep = images
            ptr = ctypes.cast(ctypes.c_char_p(images), ctypes.c_void_p).value
        elif not mv.readonly:
            raw = mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv
            keep = (ctypes.c_char * raw.nbytes).from_buffer(raw)
            ptr = ctypes.addressof(keep)
    if ptr is None:  # strided or read-only: one C-order copy
        keep = mv.tobytes()
        ptr = ctypes.cast(ctypes.c_char_p(keep), ctypes.c_void_p).value
        size = len(keep)
    else:
        size = mv.nbytes
    if size != nbytes:
        raise ValueError(
            "images are %d bytes, shape %r of %s needs %d"
            % (size, shape, [k for k, v in _DTYPES.items() if v == code][0], nbytes)
        )
    st = _lib.Images(data=ptr, len=nbytes, dtype=code, layout=lay, count=n, channels=c, height=h, width=w)
    return st, (keep, images, mv)


def _named(scalars):
    """A dict of named values as the C arrays tw_log takes."""
    n = len(scalars)
    keys = (ctypes.c_char_p * n)()
    values = (ctypes.c_double * n)()
    for i, (k, v) in enumerate(scalars.items()):
        if not isinstance(k, str):
            raise TypeError(f"scalar key {k!r} (value {v!r}): expected a str")
        if "\0" in k:
            raise ValueError(f"scalar key {k!r} (value {v!r}): contains NUL")
        keys[i] = k.encode("utf-8")
        try:
            values[i] = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"scalar key {k!r}: value {v!r} is not a number") from None
    return keys, values, n


def _ints(values, what):
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [int(v) for v in values]


class Publisher(object):
    """One training run's segment, ``<shm_dir>/<run_name>``."""

    def __init__(self, run_name, total_epochs=0, batches_per_epoch=0, batch_size=0,
                 model_name="", dataset_name="", class_names=(), shm_dir=None,
                 copy_images="auto", frame_capacity=None, frame_slots=None,
                 event_slots=None, mode=0o600):
        self._lib = _lib.load()
        self._handle = None
        if shm_dir is None:
            shm_dir = os.environ.get("TRAINWATCH_SHM_DIR") or DEFAULT_SHM_DIR
        if copy_images not in ("auto", "always"):
            raise ValueError("copy_images %r: expected 'auto' or 'always'" % (copy_images,))
        names = [_encode(c, "class name") for c in class_names]
        arr = (ctypes.c_char_p * max(len(names), 1))(*names)
        opts = _lib.Options(
            run_name=_encode(run_name, "run_name"),
            shm_dir=_encode(os.fspath(shm_dir), "shm_dir"),
            model_name=_encode(model_name, "model_name"),
            dataset_name=_encode(dataset_name, "dataset_name"),
            class_names=arr,
            class_count=len(names),
            total_epochs=total_epochs,
            batches_per_epoch=batches_per_epoch,
            batch_size=batch_size,
            frame_slots=frame_slots or 0,
            event_slots=event_slots or 0,
            control_slots=0,
            image_policy=_lib.IMAGES_ALWAYS if copy_images == "always" else _lib.IMAGES_AUTO,
            frame_capacity=frame_capacity or 0,
            mode=mode,
        )
        handle = self._lib.tw_publisher_create(ctypes.byref(opts))
        if not handle:
            raise TrainwatchError(_lib.last_error(self._lib))
        self._handle = handle
        self.path = self._lib.tw_segment_path(handle).decode("utf-8", "surrogateescape")

    def _h(self):
        if self._handle is None:
            raise TrainwatchError("publisher is closed")
        return self._handle

    def _check(self, rc):
        if rc < 0:
            raise TrainwatchError(_lib.last_error(self._lib))
        return rc

    def status(self, status, message=""):
        """Publishes a status change (a TrainingStatus name or number)."""
        code = STATUSES.get(status, status) if isinstance(status, str) else int(status)
        if isinstance(code, str):
            raise ValueError("status %r: expected one of %s" % (status, ", ".join(STATUSES)))
        return self._check(self._lib.tw_publish_status(self._h(), code, _encode(message, "message")))

    def epoch(self, epoch, average_loss, average_accuracy, metrics=None):
        """Publishes an epoch summary (lossless), with named metrics if given:
        `pub.epoch(3, 0.41, 0.88, metrics={"val_acc": 0.91})` (at most 18,
        keys and values checked as log()'s)."""
        if not metrics:
            return self._check(self._lib.tw_publish_epoch(self._h(), epoch, average_loss, average_accuracy))
        keys, values, n = _named(metrics)
        return self._check(self._lib.tw_publish_epoch_metrics(
            self._h(), epoch, average_loss, average_accuracy, keys, values, n))

    def log(self, scalars, step):
        """Logs named scalars at `step`, lossless: `pub.log({"val_loss": 0.41, "lr": 1e-3}, step=n)`.

        One call into the library per dict. Keys: 1-128 of [A-Za-z0-9._/-];
        values finite. A bad key or value raises naming both, and nothing of
        the dict is logged. Returns the seq of the last point written.
        """
        keys, values, n = _named(scalars)
        return self._check(self._lib.tw_log(self._h(), int(step), keys, values, n))

    def wants_images(self):
        """Whether the next batch would be copied (the agent reads soon)."""
        return self._check(self._lib.tw_wants_frame(self._h())) == 1

    def batch(self, epoch, batch_idx, images=None, predictions=(), confidences=None, labels=None,
              loss=0.0, layout=None, mean=None, std=None, shape=None, dtype=None):
        """Publishes a batch; returns True when it was copied.

        images: a numpy array, torch CPU tensor, or any buffer (then pass
        shape= and dtype=): (N, C, H, W) or (N, H, W, C) or (N, H, W), of
        uint8, float32 or float16. At most 16 images and samples are kept.
        mean/std: per-channel normalization to undo.
        """
        h = self._h()
        if not self._lib.tw_wants_frame(h):
            self._check(self._lib.tw_record_progress(h, epoch, batch_idx, loss))
            return False
        preds = _ints(predictions, "predictions")[:MAX_IMAGES]
        n = len(preds)
        confs = [0.0] * n if confidences is None else [float(c) for c in (
            confidences.tolist() if hasattr(confidences, "tolist") else confidences)][:MAX_IMAGES]
        labs = [-1] * n if labels is None else _ints(labels, "labels")[:MAX_IMAGES]
        if len(confs) != n or len(labs) != n:
            raise ValueError("%d predictions, %d confidences, %d labels: expected equal counts"
                             % (n, len(confs), len(labs)))
        b = _lib.Batch(epoch=epoch, batch_idx=batch_idx, loss=loss, sample_count=n,
                       predictions=(ctypes.c_int32 * max(n, 1))(*preds),
                       confidences=(ctypes.c_float * max(n, 1))(*confs),
                       labels=(ctypes.c_int32 * max(n, 1))(*labs))
        keep = None
        if images is not None:
            st, keep = _tensor(images, shape, dtype, layout)
            if mean is not None or std is not None:
                if mean is None or std is None:
                    raise ValueError("mean and std go together")
                m, s = list(mean), list(std)
                if len(m) != len(s) or len(m) not in (1, st.channels):
                    raise ValueError("mean/std need 1 or %d values" % st.channels)
                st.has_norm = 1
                st.mean[:] = (m * 3)[:3] if len(m) == 1 else (m + [0.0] * 3)[:3]
                st.std[:] = (s * 3)[:3] if len(s) == 1 else (s + [1.0] * 3)[:3]
            b.images = ctypes.pointer(st)
        self._check(self._lib.tw_publish_frame(h, ctypes.byref(b)))
        del keep
        return True

    def commands(self):
        """Yields (command, params) for each command from the dashboard, in
        order: command is a ControlCommand name ("PAUSE_TRAINING", ...),
        params a dict of strings (STOP_TRAINING has "grace_period_s"). A
        command counts as applied once handed over."""
        h = self._h()
        cmd = _lib.Command()
        while True:
            rc = self._lib.tw_next_command(h, ctypes.byref(cmd))
            if rc == 0:
                return
            if rc < 0:
                # Skipped by the library; the next poll goes on after it.
                warnings.warn("trainwatch: skipped a malformed command: " + _lib.last_error(self._lib))
                return
            # A c_char array field reads as bytes cut at the first NUL: take
            # the raw bytes instead.
            n = min(cmd.params_len, _lib.PARAMS_CAP)
            raw = ctypes.string_at(ctypes.addressof(cmd) + _lib.Command.params.offset, n)
            raw = raw.decode("utf-8", "replace")
            parts = raw.split("\0")[:-1]
            params = dict(zip(parts[0::2], parts[1::2]))
            self._check(self._lib.tw_ack_command(h, cmd.seq))
            yield COMMANDS.get(cmd.command_type, str(cmd.command_type)), params

    def heartbeat(self):
        """Marks the trainer alive without publishing."""
        self._check(self._lib.tw_heartbeat(self._h()))

    def close(self, unlink=False):
        """Marks the run closed (the agent drains and removes the segment)."""
        if self._handle is not None:
            h, self._handle = self._handle, None
            self._check(self._lib.tw_publisher_close(h, 1 if unlink else 0))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
