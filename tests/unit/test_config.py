"""Settings precedence: argument > CALLSPAN_* > [tool.callspan] > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from callspan.config import CALLSPAN_CPU, CALLSPAN_MAX_SPANS_PER_TRACE, CALLSPAN_RETURN_SIZE, load_settings
from callspan.errors import CallspanError


def project(tmp_path: Path, body: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(body)
    return tmp_path


def test_precedence(tmp_path: Path) -> None:
    where = project(tmp_path, '[tool.callspan]\ncpu = "off"\nmax-spans-per-trace = 50\n')
    assert load_settings(environ={}, project_dir=where).cpu == "off"
    assert load_settings(environ={}, project_dir=where).max_spans_per_trace == 50
    env = {CALLSPAN_CPU: "thread", CALLSPAN_MAX_SPANS_PER_TRACE: "70"}
    assert load_settings(environ=env, project_dir=where).cpu == "thread"
    assert load_settings({"cpu": "task-clock"}, environ=env, project_dir=where).cpu == "task-clock"
    assert load_settings(environ=env, project_dir=where).max_spans_per_trace == 70
    elsewhere = tmp_path.parent / (tmp_path.name + "-other")
    elsewhere.mkdir()
    assert load_settings(environ={}, project_dir=elsewhere).cpu == "auto"


def test_bad_values_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CallspanError, match="CALLSPAN_CPU: bad value 'fast'"):
        load_settings(environ={CALLSPAN_CPU: "fast"}, project_dir=tmp_path)
    where = project(tmp_path, "[tool.callspan]\nbogus = 1\n")
    with pytest.raises(CallspanError, match="unknown \\[tool.callspan\\] keys: bogus"):
        load_settings(environ={}, project_dir=where)
    (tmp_path / "pyproject.toml").write_text("[tool.callspan\n")
    with pytest.raises(CallspanError, match="pyproject.toml: cannot read"):
        load_settings(environ={}, project_dir=tmp_path)


def test_production_defaults_sit_below_every_other_source(tmp_path: Path) -> None:
    from callspan.config import load_settings

    assert load_settings(environ={}, project_dir=tmp_path).user_hash == "on"
    assert load_settings(environ={}, project_dir=tmp_path, defaults={"user_hash": "off"}).user_hash == "off"
    env = {"CALLSPAN_USER_HASH": "on"}
    assert load_settings(environ=env, project_dir=tmp_path, defaults={"user_hash": "off"}).user_hash == "on"
    (tmp_path / "pyproject.toml").write_text('[tool.callspan]\nuser-hash = "on"\n')
    assert load_settings(environ={}, project_dir=tmp_path, defaults={"user_hash": "off"}).user_hash == "on"


def test_min_span_us_flows_like_every_setting_and_production_defaults_to_100(tmp_path: Path) -> None:
    assert load_settings(environ={}, project_dir=tmp_path).min_span_us == 0
    assert load_settings(environ={}, project_dir=tmp_path, defaults={"min_span_us": 100}).min_span_us == 100
    env = {"CALLSPAN_MIN_SPAN_US": "0"}
    assert load_settings(environ=env, project_dir=tmp_path, defaults={"min_span_us": 100}).min_span_us == 0
    assert load_settings({"min_span_us": 7}, environ=env, project_dir=tmp_path).min_span_us == 7
    where = project(tmp_path, "[tool.callspan]\nmin-span-us = 50\n")
    assert load_settings(environ={}, project_dir=where).min_span_us == 50
    with pytest.raises(CallspanError, match="CALLSPAN_MIN_SPAN_US: bad value '-1'"):
        load_settings(environ={"CALLSPAN_MIN_SPAN_US": "-1"}, project_dir=tmp_path)


def test_return_size_is_a_switch(tmp_path: Path) -> None:
    assert load_settings(environ={}, project_dir=tmp_path).return_size is True
    assert load_settings(environ={CALLSPAN_RETURN_SIZE: "off"}, project_dir=tmp_path).return_size is False
    assert load_settings(environ={CALLSPAN_RETURN_SIZE: "ON"}, project_dir=tmp_path).return_size is True
    where = project(tmp_path, "[tool.callspan]\nreturn-size = false\n")
    assert load_settings(environ={}, project_dir=where).return_size is False
    with pytest.raises(CallspanError, match="CALLSPAN_RETURN_SIZE: bad value 'maybe' for return_size: must be on or off"):
        load_settings(environ={CALLSPAN_RETURN_SIZE: "maybe"}, project_dir=tmp_path)


def test_follow_children_is_a_switch_in_the_documented_order(tmp_path: Path) -> None:
    from callspan.config import CALLSPAN_FOLLOW_CHILDREN

    assert load_settings(environ={}, project_dir=tmp_path).follow_children is False
    where = project(tmp_path, "[tool.callspan]\nfollow-children = true\n")
    assert load_settings(environ={}, project_dir=where).follow_children is True
    assert load_settings(environ={CALLSPAN_FOLLOW_CHILDREN: "off"}, project_dir=where).follow_children is False
    assert load_settings({"follow_children": True}, environ={CALLSPAN_FOLLOW_CHILDREN: "off"},
                         project_dir=where).follow_children is True
    assert load_settings({"follow_children": False}, environ={CALLSPAN_FOLLOW_CHILDREN: "on"},
                         project_dir=tmp_path).follow_children is False
    with pytest.raises(CallspanError, match="CALLSPAN_FOLLOW_CHILDREN: bad value 'sometimes' for follow_children"):
        load_settings(environ={CALLSPAN_FOLLOW_CHILDREN: "sometimes"}, project_dir=tmp_path)


def test_user_hash_skip_and_keys_exclude_flow_like_every_setting(tmp_path: Path) -> None:
    from callspan.cli import _parser, _settings_from

    assert load_settings(environ={}, project_dir=tmp_path).user_hash_skip == ()
    assert load_settings(environ={}, project_dir=tmp_path).keys_exclude == ()
    where = project(tmp_path, '[tool.callspan]\nuser-hash-skip = ["app.Account"]\nkeys-exclude = "app.*"\n')
    settings = load_settings(environ={}, project_dir=where)
    assert (settings.user_hash_skip, settings.keys_exclude) == (("app.Account",), ("app.*",))
    env = {"CALLSPAN_USER_HASH_SKIP": "app.Lock, __main__.*", "CALLSPAN_KEYS_EXCLUDE": "app.handle"}
    settings = load_settings(environ=env, project_dir=where)
    assert (settings.user_hash_skip, settings.keys_exclude) == (("app.Lock", "__main__.*"), ("app.handle",))
    args = _parser().parse_args(["run", "--keys-exclude", "a.f", "--keys-exclude", "b.*", "prog.py"])
    settings = load_settings(_settings_from(args), environ=env, project_dir=where)
    assert settings.keys_exclude == ("a.f", "b.*")
