"""The contracts as other languages' code generators see them: every file names its package in
each language, and the agents' package stands alone (docs/clients.md)."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FileDescriptor

from selfmodel.admin.v1 import admin_pb2
from selfmodel.sync.v1 import sync_pb2
from selfmodel.v1 import model_pb2, selfmodel_pb2

FILES = [f.DESCRIPTOR for f in (model_pb2, selfmodel_pb2, admin_pb2, sync_pb2)]
LANGUAGE_OPTIONS = (
    "go_package",
    "java_package",
    "java_multiple_files",
    "csharp_namespace",
    "php_namespace",
    "ruby_package",
    "objc_class_prefix",
    "swift_prefix",
)


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_every_file_names_its_package_in_every_language(file: FileDescriptor) -> None:
    options = file.GetOptions()
    missing = [name for name in LANGUAGE_OPTIONS if not options.HasField(name)]
    assert not missing, f"{file.name} sets no {', '.join(missing)}"
    assert options.java_multiple_files
    path = file.package.replace(".", "/")  # selfmodel.sync.v1: selfmodel/sync/v1
    assert options.go_package.split(";")[0].endswith(path), options.go_package
    assert options.java_package.endswith(file.package.removeprefix("selfmodel")), options


def test_the_agents_package_imports_no_other_package_of_the_node() -> None:
    """An agent generates code from selfmodel/v1/ alone: no Sync or Admin client in it."""
    for file in (model_pb2.DESCRIPTOR, selfmodel_pb2.DESCRIPTOR):
        assert file.package == "selfmodel.v1"
        for imported in file.dependencies:
            assert imported.package in {"selfmodel.v1", "google.protobuf"}, imported.name
        assert set(file.services_by_name) <= {"SelfModelService"}
    assert set(sync_pb2.DESCRIPTOR.services_by_name) == {"SyncService"}
    assert set(admin_pb2.DESCRIPTOR.services_by_name) == {"AdminService"}
