"""ctypes binding of libtrainwatch.so (include/trainwatch.h, ABI version 1)."""

import ctypes
import ctypes.util
import os

ABI_VERSION = 1
PARAMS_CAP = 488

DTYPE_U8, DTYPE_F32, DTYPE_F16 = 1, 2, 3
LAYOUT_NCHW, LAYOUT_NHWC = 1, 2
IMAGES_AUTO, IMAGES_ALWAYS = 0, 1


class TrainwatchError(RuntimeError):
    """An error reported by libtrainwatch, or the library not found."""


class Options(ctypes.Structure):
    _fields_ = [
        ("run_name", ctypes.c_char_p),
        ("shm_dir", ctypes.c_char_p),
        ("model_name", ctypes.c_char_p),
        ("dataset_name", ctypes.c_char_p),
        ("class_names", ctypes.POINTER(ctypes.c_char_p)),
        ("class_count", ctypes.c_uint32),
        ("total_epochs", ctypes.c_uint32),
        ("batches_per_epoch", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("frame_slots", ctypes.c_uint32),
        ("event_slots", ctypes.c_uint32),
        ("control_slots", ctypes.c_uint32),
        ("image_policy", ctypes.c_uint32),
        ("frame_capacity", ctypes.c_uint64),
        ("mode", ctypes.c_uint32),
    ]


class Images(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("len", ctypes.c_uint64),
        ("dtype", ctypes.c_uint32),
        ("layout", ctypes.c_uint32),
        ("count", ctypes.c_uint32),
        ("channels", ctypes.c_uint32),
        ("height", ctypes.c_uint32),
        ("width", ctypes.c_uint32),
        ("has_norm", ctypes.c_uint32),
        ("mean", ctypes.c_float * 3),
        ("std", ctypes.c_float * 3),
    ]


class Batch(ctypes.Structure):
    _fields_ = [
        ("epoch", ctypes.c_uint32),
        ("batch_idx", ctypes.c_uint32),
        ("loss", ctypes.c_float),
        ("sample_count", ctypes.c_uint32),
        ("predictions", ctypes.POINTER(ctypes.c_int32)),
        ("confidences", ctypes.POINTER(ctypes.c_float)),
        ("labels", ctypes.POINTER(ctypes.c_int32)),
        ("images", ctypes.POINTER(Images)),
    ]


class Command(ctypes.Structure):
    _fields_ = [
        ("seq", ctypes.c_uint64),
        ("command_type", ctypes.c_uint32),
        ("params_len", ctypes.c_uint32),
        ("timestamp_unix_ns", ctypes.c_uint64),
        ("params", ctypes.c_char * PARAMS_CAP),
    ]


def _candidates():
    """(description, path or name) in the order they are tried."""
    out = []
    env = os.environ.get("TRAINWATCH_LIB")
    if env:
        out.append(("TRAINWATCH_LIB", env))
    here = os.path.dirname(os.path.abspath(__file__))
    out.append(("beside the package", os.path.join(here, "libtrainwatch.so")))
    found = ctypes.util.find_library("trainwatch")
    if found:
        out.append(("system library path", found))
    out.append(("system library path", "libtrainwatch.so"))
    return out


def _declare(lib):
    P = ctypes.c_void_p
    sigs = {
        "tw_abi_version": ([], ctypes.c_uint32),
        "tw_format_version": ([], ctypes.c_uint32),
        "tw_last_error": ([], ctypes.c_char_p),
        "tw_publisher_create": ([ctypes.POINTER(Options)], P),
        "tw_wants_frame": ([P], ctypes.c_int),
        "tw_publish_batch": ([P, ctypes.POINTER(Batch)], ctypes.c_int),
        "tw_publish_frame": ([P, ctypes.POINTER(Batch)], ctypes.c_int),
        "tw_record_progress": ([P, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_float], ctypes.c_int),
        "tw_publish_epoch": ([P, ctypes.c_uint32, ctypes.c_float, ctypes.c_float], ctypes.c_int64),
        "tw_publish_status": ([P, ctypes.c_uint32, ctypes.c_char_p], ctypes.c_int64),
        "tw_log": ([P, ctypes.c_int64, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_double),
                    ctypes.c_size_t], ctypes.c_int64),
        "tw_publish_epoch_metrics": ([P, ctypes.c_uint32, ctypes.c_float, ctypes.c_float,
                                      ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_double),
                                      ctypes.c_size_t], ctypes.c_int64),
        "tw_next_command": ([P, ctypes.POINTER(Command)], ctypes.c_int),
        "tw_ack_command": ([P, ctypes.c_uint64], ctypes.c_int),
        "tw_heartbeat": ([P], ctypes.c_int),
        "tw_segment_path": ([P], ctypes.c_char_p),
        "tw_publisher_close": ([P, ctypes.c_int], ctypes.c_int),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res


_LIB = None


def load():
    """The loaded library; raises TrainwatchError listing every path tried."""
    global _LIB
    if _LIB is not None:
        return _LIB
    tried = []
    for where, path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            _declare(lib)
        except (OSError, AttributeError) as e:
            tried.append("%s (%s): %s" % (path, where, e))
            continue
        version = lib.tw_abi_version()
        if version != ABI_VERSION:
            tried.append(
                "%s (%s): ABI version %d, this wrapper needs %d" % (path, where, version, ABI_VERSION)
            )
            continue
        _LIB = lib
        return lib
    raise TrainwatchError(
        "libtrainwatch.so not found or unusable; tried:\n  " + "\n  ".join(tried)
        + "\nSet TRAINWATCH_LIB to the library's path."
    )


def last_error(lib):
    msg = lib.tw_last_error()
    return msg.decode("utf-8", "replace") if msg else "unknown error"
