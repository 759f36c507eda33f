"""Generated protobuf modules (``arqonbus.v1``) from proto/proto/arqonbus/v1.

Do not edit: regenerate with ``scripts/gen_proto.sh``.
"""
