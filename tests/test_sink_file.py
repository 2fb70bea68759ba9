"""The file sink: path layout, safe names, atomic overwrite on redelivery, unwritable folders, settings."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from o365collector.errors import ConfigError, SinkPermanentError, SinkTransientError
from o365collector.models import BlobContext
from o365collector.sinks.file import FileSink, FileSinkSettings, safe_name
from o365collector.sinks.registry import parse_sink_settings

TENANT = "11111111-2222-4333-8444-555555555555"
CONTENT_ID = "20260304223000.000000000$20260304223000.000000000$audit_exchange$Audit_Exchange$emea0026"


def context(content_id: str = CONTENT_ID, created: dt.datetime | None = None) -> BlobContext:
    return BlobContext(
        tenant_id=TENANT,
        content_type="Audit.Exchange",
        content_id=content_id,
        content_created=created or dt.datetime(2026, 3, 4, 22, 30, tzinfo=dt.UTC),
    )


def records(count: int, tag: str = "a") -> list[dict[str, Any]]:
    return [
        {"Id": f"{tag}-{index}", "Operation": "Send", "Big": 2**64 + index, "Name": "Zoë"} for index in range(count)
    ]


def all_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def read_ndjson(path: Path) -> list[Any]:
    text = path.read_text("utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def sink(tmp_path: Path) -> FileSink:
    return FileSinkSettings.from_env({"SINK_FILE_DIR": str(tmp_path / "out")}).create()


def test_path_layout(tmp_path: Path, sink: FileSink) -> None:
    sink.send(records(2), context())

    expected_dir = tmp_path / "out" / TENANT / "Audit.Exchange" / "2026" / "03" / "04"
    (written,) = all_files(tmp_path / "out")
    assert written.parent == expected_dir
    assert written.name == f"{safe_name(CONTENT_ID)}.ndjson"
    assert written.name.startswith("20260304223000.000000000_20260304223000.000000000_audit_exchange_")
    assert sink.path_for(context()) == written


def test_date_is_content_created_in_utc(tmp_path: Path, sink: FileSink) -> None:
    """00:30 at UTC+02:00 on the 5th is 22:30 UTC on the 4th."""
    created = dt.datetime(2026, 3, 5, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert sink.path_for(context(created=created)).parent.parts[-3:] == ("2026", "03", "04")


def test_records_are_written_exactly_as_ndjson(tmp_path: Path, sink: FileSink) -> None:
    given = records(3)
    sink.send(given, context())
    path = sink.path_for(context())
    assert read_ndjson(path) == given
    assert path.read_bytes().count(b"\n") == 3


def test_redelivery_overwrites_instead_of_duplicating(tmp_path: Path, sink: FileSink) -> None:
    sink.send(records(5, tag="first"), context())
    sink.send(records(3, tag="second"), context())

    (written,) = all_files(tmp_path / "out")
    assert read_ndjson(written) == records(3, tag="second")


def test_no_temporary_files_are_left(tmp_path: Path, sink: FileSink) -> None:
    for index in range(3):
        sink.send(records(2), context(content_id=f"id${index}"))
    sink.check()
    names = [path.name for path in all_files(tmp_path / "out")]
    assert len(names) == 3
    assert all(name.endswith(".ndjson") and not name.startswith(".") for name in names)


def test_failed_write_keeps_the_previous_file_whole(
    tmp_path: Path, sink: FileSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails before the rename leaves the old file as it was and no temporary file."""
    sink.send(records(4, tag="old"), context())

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(SinkTransientError, match="SINK_FILE_DIR"):
        sink.send(records(10, tag="new"), context())

    (written,) = all_files(tmp_path / "out")
    assert read_ndjson(written) == records(4, tag="old")


def test_failure_while_serializing_leaves_no_partial_file(tmp_path: Path, sink: FileSink) -> None:
    sink.send(records(2, tag="old"), context())
    broken: list[Any] = [*records(3, tag="new"), {"Unserializable": object()}]
    with pytest.raises(TypeError):
        sink.send(broken, context())
    (written,) = all_files(tmp_path / "out")
    assert read_ndjson(written) == records(2, tag="old")


def test_empty_blob_writes_an_empty_file(sink: FileSink) -> None:
    sink.send([], context())
    assert sink.path_for(context()).read_bytes() == b""


SAFE_NAME_CASES = [
    "492638008028$492638008028$f28ab78ad40140608012736e373933ebspo2015043022$4a81a7c326fc4aed89c62e6039ab833b$04",
    "../../etc/passwd",
    "..",
    ".hidden",
    'a/b\\c:d*e?f"g<h>i|j',
    "Zürich 監査 🙂",
    "",
    "x" * 1000,
    "CON",
    "nul\x00byte\nnewline",
]


@pytest.mark.parametrize("content_id", SAFE_NAME_CASES)
def test_file_names_are_safe(tmp_path: Path, sink: FileSink, content_id: str) -> None:
    name = safe_name(content_id)
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert not name.startswith(".")
    assert len(name) <= 160
    sink.send(records(1), context(content_id=content_id))
    written = sink.path_for(context(content_id=content_id))
    assert written.is_file()
    assert written.parent == tmp_path / "out" / TENANT / "Audit.Exchange" / "2026" / "03" / "04"


def test_ids_that_clean_up_alike_get_different_files(sink: FileSink) -> None:
    ids = ["a$b", "a_b", "a/b", "a b", "x" * 200 + "1", "x" * 200 + "2"]
    paths = {sink.path_for(context(content_id=content_id)) for content_id in ids}
    assert len(paths) == len(ids)
    for content_id in ids:
        sink.send(records(1, tag=content_id), context(content_id=content_id))
    for content_id in ids:
        assert read_ndjson(sink.path_for(context(content_id=content_id))) == records(1, tag=content_id)


def test_unusual_tenant_and_content_type_stay_inside_the_folder(tmp_path: Path, sink: FileSink) -> None:
    odd = BlobContext("../tenant", "../../Audit", "id", dt.datetime(2026, 3, 4, tzinfo=dt.UTC))
    path = sink.path_for(odd)
    assert path.resolve().is_relative_to((tmp_path / "out").resolve())


# -- unwritable folders


def test_folder_under_a_file_is_a_permanent_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    sink = FileSinkSettings.from_env({"SINK_FILE_DIR": str(blocker / "out")}).create()
    with pytest.raises(SinkPermanentError, match=r"^SINK_FILE_DIR: "):
        sink.check()
    with pytest.raises(SinkPermanentError, match=r"^SINK_FILE_DIR: "):
        sink.send(records(1), context())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_a_permanent_error(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        sink = FileSinkSettings.from_env({"SINK_FILE_DIR": str(root)}).create()
        with pytest.raises(SinkPermanentError, match="SINK_FILE_DIR"):
            sink.check()
        with pytest.raises(SinkPermanentError, match="SINK_FILE_DIR"):
            sink.send(records(1), context())
    finally:
        root.chmod(0o700)


def test_full_disk_is_transient(sink: FileSink, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(SinkTransientError, match="SINK_FILE_DIR"):
        sink.send(records(1), context())


def test_check_creates_the_folder_and_leaves_nothing(tmp_path: Path, sink: FileSink) -> None:
    sink.check()
    assert (tmp_path / "out").is_dir()
    assert list((tmp_path / "out").iterdir()) == []


# -- the Wazuh wrapper


def test_wazuh_wrapper_writes_each_record_under_office365(tmp_path: Path) -> None:
    """SINK_FILE_WRAPPER=wazuh: every line, read as a Wazuh localfile with log_format json reads it, is
    {"integration":"office365","office365":<record>}, and the record round-trips exactly; a line feed in a
    field stays inside its line."""
    sink = FileSinkSettings.from_env({"SINK_FILE_DIR": str(tmp_path / "out"), "SINK_FILE_WRAPPER": "Wazuh"}).create()
    given = [*records(3), {"Id": "n", "Text": "one\ntwo\r\n", "Nested": {"List": [1, 2.5, None]}, "Huge": 10**30}]
    sink.send(given, context())

    lines = sink.path_for(context()).read_bytes().split(b"\n")
    assert lines[-1] == b""  # newline-terminated, one line per record
    events = [json.loads(line) for line in lines[:-1]]
    assert [list(event) for event in events] == [["integration", "office365"]] * len(given)
    assert {event["integration"] for event in events} == {"office365"}
    assert [event["office365"] for event in events] == given


def test_records_are_written_bare_by_default(tmp_path: Path, sink: FileSink) -> None:
    assert FileSinkSettings.from_env({"SINK_FILE_DIR": str(tmp_path)}).wrapper == "none"
    sink.send(records(2), context())
    assert read_ndjson(sink.path_for(context())) == records(2)


# -- settings


def test_settings_require_the_folder() -> None:
    with pytest.raises(ConfigError) as caught:
        FileSinkSettings.from_env({})
    assert caught.value.setting == "SINK_FILE_DIR"
    with pytest.raises(ConfigError) as caught:
        parse_sink_settings({"SINK_TYPE": "file", "SINK_FILE_DIR": "  "})
    assert caught.value.setting == "SINK_FILE_DIR"
    with pytest.raises(ConfigError) as caught:
        FileSinkSettings.from_env({"SINK_FILE_DIR": "/tmp/x", "SINK_FILE_WRAPPER": "ossec"})
    assert caught.value.setting == "SINK_FILE_WRAPPER"


def test_registry_builds_the_file_sink(tmp_path: Path) -> None:
    (settings,) = parse_sink_settings({"SINK_TYPE": "file", "SINK_FILE_DIR": str(tmp_path)})
    assert isinstance(settings, FileSinkSettings)
    assert settings.name == "file"
    assert settings.directory == tmp_path
    sink = settings.create()
    assert isinstance(sink, FileSink)
    assert sink.name == "file"
    sink.close()


# -- shape (SINK_FILE_SHAPE)


def test_flat_shape_writes_o365_audit_fields_and_timestamp(tmp_path: Path) -> None:
    sink = FileSinkSettings.from_env({"SINK_FILE_DIR": str(tmp_path / "out"), "SINK_FILE_SHAPE": "flat"}).create()
    given = [{"CreationTime": "2026-03-04T22:29:59", "Id": "a", "Big": 2**64, "P": [{"Name": "N"}]}, {"Id": "b"}]
    sink.send(given, context())
    assert read_ndjson(sink.path_for(context())) == [
        {
            "@timestamp": "2026-03-04T22:29:59Z",
            "o365.audit.CreationTime": "2026-03-04T22:29:59",
            "o365.audit.Id": "a",
            "o365.audit.Big": 2**64,
            "o365.audit.P": [{"Name": "N"}],
        },
        {"o365.audit.Id": "b"},  # no CreationTime, no @timestamp
    ]


def test_raw_shape_is_the_default(tmp_path: Path, sink: FileSink) -> None:
    given = [{"CreationTime": "2026-03-04T22:29:59", "Id": "a"}]
    sink.send(given, context())
    assert read_ndjson(sink.path_for(context())) == given


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"SINK_FILE_SHAPE": "nested"}, r"SINK_FILE_SHAPE: unknown value 'nested'"),
        ({"SINK_FILE_SHAPE": "flat", "SINK_FILE_WRAPPER": "wazuh"}, r"SINK_FILE_SHAPE.*SINK_FILE_WRAPPER=wazuh"),
    ],
)
def test_shape_setting_errors_name_the_setting(tmp_path: Path, env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FileSinkSettings.from_env({"SINK_FILE_DIR": str(tmp_path), **env})
