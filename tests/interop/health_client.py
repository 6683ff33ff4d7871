"""grpc.health.v1 from the official Python client, against the spfs service.

    health_client.py check SOCKET SERVICE   print the status name of SERVICE
    health_client.py watch SOCKET SERVICE   print each status name as it changes
    health_client.py serve SOCKET STATUS    a foreign health server: every service
                                            is STATUS; runs until killed
"""

import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


# gRPC C-core sends the socket path as :authority on unix sockets; the HTTP/2
# stack of tonic (h2) rejects that as a malformed authority (PROTOCOL_ERROR).
# "localhost" is what grpc-go, grpc-health-probe and tonic itself send.
CHANNEL_OPTIONS = [("grpc.default_authority", "localhost")]


def status_name(value):
    return health_pb2.HealthCheckResponse.ServingStatus.Name(value)


def main():
    mode, socket, arg = sys.argv[1:4]
    target = "unix:" + socket
    if mode == "check":
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=arg), timeout=5)
            print(status_name(reply.status), flush=True)
    elif mode == "watch":
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                for reply in stub.Watch(health_pb2.HealthCheckRequest(service=arg)):
                    print(status_name(reply.status), flush=True)
            except grpc.RpcError as err:
                print("STREAM_ENDED", err.code().name, flush=True)
    elif mode == "serve":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        status = health_pb2.HealthCheckResponse.ServingStatus.Value(arg)
        for name in ("", "spfs.vfs.v1.VfsService"):
            servicer.set(name, status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(target)
        server.start()
        print("LISTENING", flush=True)
        while True:
            time.sleep(3600)
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
