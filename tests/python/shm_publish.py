"""Trainer side of the cross-language shm tests (tests/shm.rs runs it).

    shm_publish.py roundtrip OUTDIR   one segment per case, expectations in OUTDIR
    shm_publish.py control            prints the path, waits for a line on stdin,
                                      prints the commands received as JSON
    shm_publish.py auto               copy policy: prints whether each batch was
                                      copied, in step with the test on stdin
    shm_publish.py die                prints the path, exits without closing
    shm_publish.py load               only loads the library (error text on stderr)
    shm_publish.py u8norm             publishes u8 images with mean/std: prints
                                      the exception raised

Segments go to $TRAINWATCH_SHM_DIR; the library comes from $TRAINWATCH_LIB.
"""

import json
import os
import sys

import numpy as np

from trainwatch import Publisher, TrainwatchError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class FakeTensor(object):
    """Duck-typed like a torch CPU tensor: detach() and numpy()."""

    def __init__(self, a):
        self._a = a
        self.device = "cpu"

    def detach(self):
        return self

    def numpy(self):
        return self._a


def cases(rng):
    def u8(*shape):
        return rng.integers(0, 256, size=shape, dtype=np.uint8)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    nchw = f32(4, 3, 6, 5)
    yield "f32_nchw_norm", dict(images=f32(16, 3, 32, 32), layout="NCHW", mean=MEAN, std=STD), dict(
        dtype="f32", layout="NCHW", shape=(16, 3, 32, 32), norm=True)
    yield "u8_nhwc", dict(images=u8(4, 8, 6, 3)), dict(dtype="u8", layout="NHWC", shape=(4, 3, 8, 6))
    yield "f16_nchw", dict(images=f32(2, 3, 5, 7).astype(np.float16)), dict(
        dtype="f16", layout="NCHW", shape=(2, 3, 5, 7))
    yield "gray_u8_nhw", dict(images=u8(3, 10, 12)), dict(dtype="u8", layout="NHWC", shape=(3, 1, 10, 12))
    yield "gray_f32_nchw", dict(images=f32(2, 1, 9, 9), mean=(0.5,), std=(0.25,)), dict(
        dtype="f32", layout="NCHW", shape=(2, 1, 9, 9), norm=True)
    yield "strided_nhwc", dict(images=nchw.transpose(0, 2, 3, 1), layout="NHWC"), dict(
        dtype="f32", layout="NHWC", shape=(4, 3, 6, 5))
    yield "bytes_explicit", dict(images=u8(2, 3, 4, 4).tobytes(), shape=(2, 3, 4, 4), dtype="u8", layout="NCHW"), dict(
        dtype="u8", layout="NCHW", shape=(2, 3, 4, 4))
    yield "torch_like", dict(images=FakeTensor(f32(2, 3, 4, 4))), dict(dtype="f32", layout="NCHW", shape=(2, 3, 4, 4))
    yield "over16", dict(images=u8(20, 3, 4, 4)), dict(dtype="u8", layout="NCHW", shape=(16, 3, 4, 4))


def roundtrip(outdir):
    rng = np.random.default_rng(7)
    for i, (name, kw, expect) in enumerate(cases(rng)):
        n = expect["shape"][0]
        samples = 20 if name == "over16" else n
        preds = [int(v) for v in rng.integers(0, 10, size=samples)]
        confs = [float(np.float32(v)) for v in rng.random(samples)]
        labels = [int(v) for v in rng.integers(0, 10, size=samples)]
        pub = Publisher(name, total_epochs=10, batches_per_epoch=500, batch_size=64,
                        model_name="resnet18", dataset_name="cifar10", class_names=CLASSES,
                        copy_images="always", frame_capacity=256 << 10, event_slots=64)
        pub.status("RUNNING", "started " + name)
        copied = pub.batch(epoch=i, batch_idx=100 + i, predictions=preds, confidences=confs,
                           labels=labels, loss=0.5 + i, **kw)
        assert copied
        pub.epoch(epoch=i, average_loss=0.25, average_accuracy=0.75)
        images = kw["images"]
        if isinstance(images, FakeTensor):
            images = images.numpy()
        if isinstance(images, bytes):
            data = images
        else:
            data = np.ascontiguousarray(images[:16]).tobytes()
        with open(os.path.join(outdir, name + ".bin"), "wb") as f:
            f.write(data)
        meta = dict(expect, epoch=i, batch_idx=100 + i, loss=0.5 + i, predictions=preds[:16],
                    confidences=confs[:16], labels=labels[:16], path=pub.path,
                    mean=list(kw.get("mean", ())), std=list(kw.get("std", ())))
        with open(os.path.join(outdir, name + ".json"), "w") as f:
            json.dump(meta, f)
        pub.close()
    print("ok")


def control():
    pub = Publisher("ctl", class_names=CLASSES, frame_capacity=4096, event_slots=64)
    print(pub.path, flush=True)
    sys.stdin.readline()
    got = [[c, p] for c, p in pub.commands()]
    print(json.dumps(got), flush=True)
    sys.stdin.readline()  # the test checks applied-up-to while we are alive
    pub.close()


def auto():
    pub = Publisher("auto", frame_capacity=4096, event_slots=64)
    x = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    alone = pub.batch(0, 0, images=x, predictions=[1, 2], loss=0.5)
    print(pub.path, flush=True)
    sys.stdin.readline()  # an agent attached
    attached = pub.batch(0, 1, images=x, predictions=[1, 2], loss=0.5)
    print(json.dumps([alone, attached]), flush=True)
    sys.stdin.readline()  # the agent took the frame; its next read is far off
    print(json.dumps(pub.batch(0, 2, images=x, predictions=[1, 2], loss=0.5)), flush=True)
    sys.stdin.readline()
    pub.close()


def die():
    pub = Publisher("dead", frame_capacity=4096, event_slots=64)
    pub.status("RUNNING", "about to vanish")
    print(pub.path, flush=True)
    os._exit(0)


def u8norm():
    pub = Publisher("u8norm", frame_capacity=4096, event_slots=64, copy_images="always")
    x = np.zeros((1, 3, 4, 4), dtype=np.uint8)
    try:
        pub.batch(0, 0, images=x, predictions=[1], loss=0.5, mean=(0.5,), std=(0.25,))
        print("accepted")
    except TrainwatchError as e:
        print("TrainwatchError: %s" % e)
    pub.close(unlink=True)


def scalars():
    """Logs named scalars and bad ones; leaves the segment for Rust to read."""
    pub = Publisher("scalars", frame_capacity=4096, event_slots=64, copy_images="always")
    print("seq %d" % pub.log({"val_loss": 0.41, "lr": 1e-3}, step=7))
    pub.log({}, step=8)
    for bad in ({"ok": 1.0, "bad key": 2.0}, {"loss": float("nan")}):
        try:
            pub.log(bad, step=9)
            print("accepted")
        except TrainwatchError as e:
            print("TrainwatchError: %s" % e)
    print("seq %d" % pub.log({"grad_norm": np.float32(2.5)}, step=9))
    pub.close()


def load():
    try:
        Publisher("x")
    except TrainwatchError as e:
        sys.stderr.write(str(e) + "\n")
        sys.exit(3)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "roundtrip":
        roundtrip(sys.argv[2])
    elif mode == "control":
        control()
    elif mode == "auto":
        auto()
    elif mode == "die":
        die()
    elif mode == "load":
        load()
    elif mode == "scalars":
        scalars()
    elif mode == "u8norm":
        u8norm()
    else:
        raise SystemExit("unknown mode " + mode)
