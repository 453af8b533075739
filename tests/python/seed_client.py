"""A MetricsService client built only from the seed's proto with grpcio, as
the original system's trainer was: registers, streams real JPEG batches, an
epoch summary, a heartbeat and one bad batch, and prints what came back as
one JSON line. Usage: seed_client.py ADDR STUBS_DIR [--ca CA_PEM]"""
import io
import json
import sys
import time

stubs = sys.argv[2]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import seed_metrics_pb2 as pb  # noqa: E402
import seed_metrics_pb2_grpc as pbg  # noqa: E402

BATCHES = 20
TIMEOUT_S = 30


def jpeg(seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32]
    img = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1) + rng.integers(0, 16, (32, 32, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def main():
    addr = sys.argv[1]
    if "--ca" in sys.argv:
        with open(sys.argv[sys.argv.index("--ca") + 1], "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(
            addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.insecure_channel(addr)
    stub = pbg.MetricsServiceStub(channel)
    sid = "python-seed-client"
    cfg = pb.TrainingConfig(total_epochs=1, batches_per_epoch=BATCHES, batch_size=16,
                            model_name="cnn", dataset_name="cifar10",
                            class_names=[f"c{i}" for i in range(10)])
    reg = stub.RegisterTrainingSession(
        pb.SessionInfo(session_id=sid, client_name="pytorch_trainer", client_version="1.0.0",
                       config=cfg, timestamp_ms=int(time.time() * 1000)),
        timeout=TIMEOUT_S)

    def requests():
        for i in range(BATCHES):
            r = pb.MetricsRequest(session_id=sid, timestamp_ms=int(time.time() * 1000))
            r.batch_data.epoch = 0
            r.batch_data.batch_idx = i
            r.batch_data.batch_loss = 2.0 / (1 + i)
            for k in range(4):
                r.batch_data.images.add().image_bytes = jpeg(i * 4 + k)
                p = r.batch_data.predictions.add()
                p.predicted_class = k
                p.confidence = 0.9
                r.batch_data.ground_truth.append(k)
            yield r
        bad = pb.MetricsRequest(session_id=sid, timestamp_ms=int(time.time() * 1000))
        bad.batch_data.batch_idx = 999
        bad.batch_data.images.add().image_bytes = b"fake_jpeg_data"
        bad.batch_data.predictions.add(predicted_class=3, confidence=0.95)
        bad.batch_data.ground_truth.append(3)
        yield bad
        ep = pb.MetricsRequest(session_id=sid, timestamp_ms=int(time.time() * 1000))
        ep.epoch_data.epoch = 0
        ep.epoch_data.average_loss = 0.5
        ep.epoch_data.average_accuracy = 0.8
        yield ep
        hb = pb.MetricsRequest(session_id=sid, timestamp_ms=int(time.time() * 1000))
        hb.heartbeat.sequence_number = 1
        yield hb

    acks, errors = [], []
    for resp in stub.StreamMetrics(requests(), timeout=TIMEOUT_S):
        kind = resp.WhichOneof("payload")
        if kind == "ack":
            acks.append(resp.ack.batch_idx)
        elif kind == "error":
            errors.append({"code": pb.ErrorResponse.ErrorCode.Name(resp.error.code),
                           "message": resp.error.message})
    print(json.dumps({
        "registered": reg.success,
        "message": reg.message,
        "server_config": [reg.server_config.max_batch_size, reg.server_config.max_image_dimension,
                          reg.server_config.heartbeat_interval_ms, reg.server_config.buffer_size],
        "acks": acks,
        "errors": errors,
    }))


if __name__ == "__main__":
    main()
