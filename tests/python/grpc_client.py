#!/usr/bin/env python3
"""A stock grpcio client of miniond, as QA tooling would write one: default channel options and
no generated code, only what the server's reflection says. Prints one JSON object per step and
exits non-zero at the first failure.

    grpc_client.py TARGET REPO [--ca FILE] [--token TOKEN]

TARGET is a gRPC target (unix:/path/to/miniond.sock, or host:port with --ca for TLS)."""
import argparse
import json
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

CONTROLLER = "minion.v1.controller.Controller"


def out(**kw):
    print(json.dumps(kw), flush=True)


def channel(args):
    if args.ca is None:
        return grpc.insecure_channel(args.target)
    with open(args.ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    if args.token:
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(args.token)
        )
    return grpc.secure_channel(args.target, creds)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("repo")
    p.add_argument("--ca")
    p.add_argument("--token")
    args = p.parse_args()
    ch = channel(args)

    health = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=30
    )
    out(step="health", status=health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))

    # grpcio-reflection asks grpc.reflection.v1alpha.
    db = ProtoReflectionDescriptorDatabase(ch)
    out(step="reflection_v1alpha", services=sorted(db.get_services()))
    # v1 carries the same messages under another service name.
    v1 = ch.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    first = next(v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30))
    out(
        step="reflection_v1",
        services=sorted(s.name for s in first.list_services_response.service),
    )

    # The controller's messages, built from the descriptors reflection returned.
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName(CONTROLLER)

    def method(name, streaming=False):
        m = svc.FindMethodByName(name)
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        call = (ch.unary_stream if streaming else ch.unary_unary)(
            f"/{CONTROLLER}/{name}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        return req, call

    req, submit = method("SubmitJob")
    job = submit(
        req(repo=args.repo, item="python-grpcio-1.0-1.fc40", item_type="koji_build"), timeout=120
    ).job
    out(step="submit", id=job.id)

    req, watch = method("WatchJob", streaming=True)
    log_bytes, lifecycle, final = 0, 0, None
    for ev in watch(req(id=job.id, from_start=True), timeout=600):
        kind = ev.WhichOneof("event")
        if kind == "log":
            log_bytes += len(ev.log.data)
        elif kind == "lifecycle":
            lifecycle += 1
        elif kind == "finished":
            final = ev.finished
    if final is None:
        out(step="watch", error="the stream ended without the finished event")
        return 1
    state = final.DESCRIPTOR.fields_by_name["state"].enum_type.values_by_number[final.state].name
    out(step="watch", state=state, log_bytes=log_bytes, lifecycle_events=lifecycle)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:
        out(step="error", code=e.code().name, details=e.details())
        sys.exit(2)
