"""JSON-lines logs that never lose a line that parses, and the workdir lock."""
import multiprocessing
import os

import pytest

from npc_jax import records


def _write(path, text):
    path.write_bytes(text.encode())
    return path


def test_a_complete_last_line_without_newline_is_read_and_kept(tmp_path):
    # An editor that saves without a final newline.
    path = _write(tmp_path / "log.jsonl", '{"a": 1}\n{"a": 2}')
    before = path.read_bytes()
    assert records.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == before                     # reading never writes
    log = records.JsonlLog(path)
    log.append({"a": 3})
    assert [r["a"] for r in log.read()] == [1, 2, 3]
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n{"a": 3}\n'


def test_a_torn_last_line_is_skipped_on_read_and_cut_on_append(tmp_path):
    path = _write(tmp_path / "log.jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3, "tru')
    before = path.read_bytes()
    assert records.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == before
    log = records.JsonlLog(path)
    log.append({"a": 4})
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n{"a": 4}\n'


def test_a_damaged_line_before_the_last_names_file_and_line(tmp_path):
    path = _write(tmp_path / "log.jsonl", '{"a": 1}\ngarbage\n{"a": 2}\n')
    with pytest.raises(records.RecordsError, match=r"log.jsonl:2 is not a JSON object"):
        records.read_jsonl(path)
    assert path.read_bytes() == b'{"a": 1}\ngarbage\n{"a": 2}\n'


def test_missing_and_empty_files_read_as_empty(tmp_path):
    assert records.read_jsonl(tmp_path / "none.jsonl") == []
    assert records.read_jsonl(_write(tmp_path / "empty.jsonl", "")) == []
    log = records.JsonlLog(tmp_path / "sub" / "new.jsonl")
    log.append({"x": 1})
    assert log.read() == [{"x": 1}]


def test_write_atomically_replaces_whole_files(tmp_path):
    path = tmp_path / "f.json"
    records.write_atomically(path, b"one")
    records.write_atomically(path, b"two")
    assert path.read_bytes() == b"two" and sorted(os.listdir(tmp_path)) == ["f.json"]


@pytest.mark.parametrize("value, match", [("", "is empty"), ("   ", "is empty")])
def test_check_writable_dir_refuses_an_empty_path(value, match):
    with pytest.raises(records.RecordsError, match=match):
        records.check_writable_dir(value)


def test_check_writable_dir_refuses_a_file_and_a_read_only_dir(tmp_path):
    file = _write(tmp_path / "file", "x")
    with pytest.raises(records.RecordsError, match="is a file, not a directory"):
        records.check_writable_dir(file)


def _read_only(monkeypatch):
    """Every file creation fails as on a read-only mount (root ignores chmod)."""
    import errno
    import pathlib

    def refuse(self, data):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)


def test_check_writable_dir_refuses_a_read_only_dir(tmp_path, monkeypatch):
    _read_only(monkeypatch)
    with pytest.raises(records.RecordsError, match="not writable .Read-only file system"):
        records.check_writable_dir(tmp_path)


def _hold_lock(workdir, ready, release):
    with records.WorkdirLock(workdir):
        ready.set()
        release.wait(30)


def test_a_second_process_on_a_locked_workdir_fails_at_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(records.WorkdirBusy, match=f"in use by pid {holder.pid}"):
            with records.WorkdirLock(tmp_path):
                pass
    finally:
        release.set()
        holder.join(30)
    with records.WorkdirLock(tmp_path):   # free again once the holder is gone
        pass


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(60)
    holder.kill()
    holder.join(30)
    with records.WorkdirLock(tmp_path):
        pass
