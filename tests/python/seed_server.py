"""A MetricsService server built only from the seed's proto with grpcio, as
the seed document shows it: it acknowledges batches and answers nothing else
(no heartbeat acks). Prints one JSON line per event: {"ready": port},
{"registered": session_id}, {"stream": "open"|"closed"}, and every 10th
batch {"batches": n}. Usage: seed_server.py STUBS_DIR"""
import json
import sys
import threading
from concurrent import futures

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402

import seed_metrics_pb2 as pb  # noqa: E402
import seed_metrics_pb2_grpc as pbg  # noqa: E402

lock = threading.Lock()


def say(**kw):
    with lock:
        print(json.dumps(kw), flush=True)


class Servicer(pbg.MetricsServiceServicer):
    def __init__(self):
        self.batches = 0

    def RegisterTrainingSession(self, request, context):
        say(registered=request.session_id)
        return pb.SessionResponse(
            success=True, session_id=request.session_id, message="registered",
            server_config=pb.ServerConfig(max_batch_size=16, max_image_dimension=512,
                                          heartbeat_interval_ms=2000, buffer_size=100))

    def StreamMetrics(self, request_iterator, context):
        say(stream="open")
        try:
            for req in request_iterator:
                if req.WhichOneof("payload") == "batch_data":
                    self.batches += 1
                    if self.batches % 10 == 0:
                        say(batches=self.batches)
                    yield pb.MetricsResponse(
                        session_id=req.session_id,
                        ack=pb.Acknowledgment(batch_idx=req.batch_data.batch_idx, success=True))
        finally:
            say(stream="closed")


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    pbg.add_MetricsServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    say(ready=port)
    server.wait_for_termination(timeout=300)


if __name__ == "__main__":
    main()
