#!/bin/sh
# Regenerate sparkplug_b_pb2.py (runtime code) and sparkplug_b_pb2.pyi (typing stubs
# for mypy --strict) from sparkplug_b.proto. Run from anywhere; PYTHON defaults to
# the repository's .venv. Both generators are pinned (see README.md): another protoc
# writes different code and may need a newer protobuf runtime than cellctl declares.
set -eu
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
BIN="$(dirname "$PY")"
WANT_PROTOC="libprotoc 35.1"           # the protoc inside grpcio-tools==1.85.1
WANT_MYPY="mypy-protobuf 5.1.0"
GOT_PROTOC="$("$PY" -m grpc_tools.protoc --version 2>/dev/null || true)"
GOT_MYPY="$("$BIN/protoc-gen-mypy" --version 2>/dev/null || true)"
if [ "$GOT_PROTOC" != "$WANT_PROTOC" ] || [ "$GOT_MYPY" != "$WANT_MYPY" ]; then
    echo "need $WANT_PROTOC and $WANT_MYPY:" >&2
    echo "  $PY -m pip install 'grpcio-tools==1.85.1' 'mypy-protobuf==5.1.0'" >&2
    echo "found: '${GOT_PROTOC:-no grpc_tools}' and '${GOT_MYPY:-no protoc-gen-mypy}'" >&2
    exit 1
fi
"$PY" -m grpc_tools.protoc \
    --proto_path=. \
    --python_out=. \
    --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" \
    --mypy_out=. \
    cellctl/sparkplug/sparkplug_b.proto
echo "generated cellctl/sparkplug/sparkplug_b_pb2.py and .pyi ($GOT_PROTOC, $GOT_MYPY)"
