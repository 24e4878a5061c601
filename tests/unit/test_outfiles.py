"""Output files are never written through a symbolic link: a new file beside the path, renamed onto it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from callspan.errors import CallspanError
from callspan.outfiles import open_output, write_output


def test_a_link_to_a_file_is_replaced_and_its_target_left_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "report.txt"
    link.symlink_to(victim)
    assert write_output(str(link), "report\n") == str(victim)
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text() == "report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt", "victim.txt"]  # no temporary left


def test_a_stream_takes_the_path_at_once_and_a_dangling_link_creates_nothing(tmp_path: Path) -> None:
    link = tmp_path / "callspan-traces.jsonl"
    link.symlink_to(tmp_path / "elsewhere" / "created.jsonl")
    opened = open_output(str(link))
    with opened.stream as stream:
        stream.write("line 1\n")
        stream.flush()
        assert link.read_text() == "line 1\n"  # readable while written (a long-running exporter)
        stream.write("line 2\n")
    assert opened.replaced_link == str(tmp_path / "elsewhere" / "created.jsonl")
    assert link.read_text() == "line 1\nline 2\n" and not link.is_symlink()
    assert not (tmp_path / "elsewhere").exists()


def test_a_stream_may_append_so_that_forked_writers_share_the_file(tmp_path: Path) -> None:
    import fcntl

    link = tmp_path / "callspan-traces.jsonl"
    link.symlink_to(tmp_path / "victim")
    with open_output(str(link), append=True).stream as stream:
        assert fcntl.fcntl(stream.fileno(), fcntl.F_GETFL) & os.O_APPEND
        stream.write("one\n")
    assert link.read_text() == "one\n" and not (tmp_path / "victim").exists()


def test_an_existing_file_is_replaced_with_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text("old and longer\n")
    path.chmod(0o640)
    assert write_output(str(path), "new\n") is None
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_devices_and_system_links_are_written_into(tmp_path: Path) -> None:
    assert write_output(os.devnull, "nothing\n") is None
    link = tmp_path / "to-null"
    link.symlink_to(os.devnull)  # like /dev/stdout -> /proc/self/fd/1
    with open_output(str(link)).stream as stream:
        stream.write("nothing\n")
    assert link.is_symlink() and os.readlink(link) == os.devnull


def test_a_descriptor_named_is_written_into_even_when_it_leads_to_a_file(tmp_path: Path) -> None:
    # `-o /dev/stdout > report.txt`: the file the shell opened is written, and no file is renamed
    # onto the descriptor's name (as root, one renamed onto /dev/stdout would replace the system's
    # link). Tested through /dev/fd and /proc, where no file can be created if this broke.
    report = tmp_path / "report.txt"
    with open(report, "w") as shell_opened:
        for name in (f"/dev/fd/{shell_opened.fileno()}", f"/proc/self/fd/{shell_opened.fileno()}"):
            assert write_output(name, f"report via {name}\n") is None
            assert report.read_text() == f"report via {name}\n" and os.path.islink(name)
        with open_output(f"/dev/fd/{shell_opened.fileno()}").stream as stream:
            stream.write("spans\n")
        assert report.read_text() == "spans\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_a_link_to_a_pipe_outside_dev_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "someone-elses.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "out.txt"
    link.symlink_to(fifo)
    with pytest.raises(CallspanError, match="out.txt: a symbolic link to a pipe, socket or device outside /dev"):
        write_output(str(link), "secret\n")
    assert link.is_symlink()


def test_errors_are_one_line_and_leave_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(CallspanError, match=r"dir: is a directory$"):
        write_output(str(tmp_path / "dir"), "x")
    with pytest.raises(CallspanError, match="missing/out.txt: cannot write: No such file or directory"):
        write_output(str(tmp_path / "missing" / "out.txt"), "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may create files in any directory (run as a user to test)")
def test_a_file_in_a_closed_directory_is_truncated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old and longer\n")
    tmp_path.chmod(0o555)
    try:
        assert write_output(str(path), "new\n") is None
        assert path.read_text() == "new\n"
    finally:
        tmp_path.chmod(0o755)
