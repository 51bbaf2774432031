"""Public protobuf schemas declared at run time: message classes without protoc or generated code.

The model-file readers (:mod:`.caffe`: Caffe's NetParameter, :mod:`.tensorflow_graph`: TensorFlow's
GraphDef) declare just the fields they read, with the schema's own field numbers, into a
``FileDescriptorProto`` of a package of their own; the protobuf runtime then parses the files
(fields not declared are skipped).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

Field = tuple  # (name, number, FieldDescriptorProto type, label, message type name or None[, packed])


def add_message(file: descriptor_pb2.FileDescriptorProto, name: str, fields: list[Field],
                parent: descriptor_pb2.DescriptorProto | None = None) -> descriptor_pb2.DescriptorProto:
    """Declare message ``name`` (nested in ``parent`` if given) with ``fields``; message types are
    named relative to the file's package ("Outer.Inner" for a nested one). Returns its descriptor."""
    proto = (parent.nested_type if parent is not None else file.message_type).add(name=name)
    for field_name, number, kind, label, type_name, *packed in fields:
        entry = proto.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            entry.type_name = f".{file.package}.{type_name}"
        if packed and packed[0]:
            entry.options.packed = True
    return proto


def message_classes(file: descriptor_pb2.FileDescriptorProto, names: tuple[str, ...]) -> dict[str, type]:
    """{name: message class} of the file's top-level messages ``names``, built in a pool of their own."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{file.package}.{name}"))
            for name in names}


def parse(message_class: type, data: bytes, error: type[Exception], what: str):
    """``data`` parsed as ``message_class``; raises ``error("{what}: <protobuf's reason>")`` when it does not parse."""
    message = message_class()
    try:
        message.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise error(f"{what}: {exc}") from None
    return message
