"""The Apptainer/Singularity files, executed with a real /bin/sh."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from reconciler.apptainer import make_apptainer_ready

ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello world", "QUOTED=it's \"quoted\" $HOME `id` \\n",
       "EMPTY=", "BARE", "bad-name=x", "EQ=a=b"]


def sh(script: str, *args: str, env=None) -> str:
    done = subprocess.run(["/bin/sh", script, *args], capture_output=True, text=True,
                          env=env if env is not None else {"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def image(tmp_path):
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("image's own hosts\n")
    os.symlink("/etc", root / "srv")  # the image has its own srv: a symlink, left alone
    skipped = make_apptainer_ready(root, env=ENV, entrypoint=["printf", "%s|"], cmd=["a b", "c'd"],
                                   labels={"b": "2", "a": "1"})
    return root, skipped


def test_env_script_exports_values_exactly(image, tmp_path):
    root, _ = image
    probe = tmp_path / "probe.sh"
    probe.write_text(f'. "{root}/.singularity.d/env/10-docker2singularity.sh"\n'
                     'for v in PATH GREETING QUOTED EMPTY BARE EQ; do printf "%s=%s\\0" "$v" "$(printenv $v)"; done\n')
    out = dict(item.split("=", 1) for item in sh(str(probe)).split("\0") if item)
    assert out == {"PATH": "/usr/local/bin:/usr/bin:/bin", "GREETING": "hello world",
                   "QUOTED": "it's \"quoted\" $HOME `id` \\n", "EMPTY": "", "BARE": "", "EQ": "a=b"}


def test_caller_environment_wins_except_for_path(image, tmp_path):
    root, _ = image
    probe = tmp_path / "probe.sh"
    probe.write_text(f'. "{root}/.singularity.d/env/10-docker2singularity.sh"\necho "$GREETING|$PATH"\n')
    assert sh(str(probe), env={"PATH": "/host/bin", "GREETING": "from host"}) == \
        "from host|/usr/local/bin:/usr/bin:/bin\n"


def test_runscript_has_oci_entrypoint_and_cmd_semantics(image):
    root, _ = image
    runscript = str(root / ".singularity.d" / "runscript")
    assert sh(runscript) == "a b|c'd|"  # Entrypoint + Cmd
    assert sh(runscript, "x y", "$HOME") == "x y|$HOME|"  # arguments replace Cmd, never re-evaluated


@pytest.mark.parametrize("entrypoint,cmd,args,expected", [
    (None, ["printf", "%s-", "cmd"], [], "cmd-"),
    (None, ["printf", "%s-", "cmd"], ["printf", "%s+", "arg"], "arg+"),
    (["printf", "%s/"], None, ["only", "args"], "only/args/"),
])
def test_runscript_cmd_only_and_entrypoint_only(tmp_path, entrypoint, cmd, args, expected):
    root = tmp_path / "img"
    root.mkdir()
    make_apptainer_ready(root, entrypoint=entrypoint, cmd=cmd)
    assert sh(str(root / ".singularity.d" / "runscript"), *args) == expected


def test_runscript_without_entrypoint_or_cmd_says_so(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    make_apptainer_ready(root)
    done = subprocess.run(["/bin/sh", str(root / ".singularity.d" / "runscript")], capture_output=True, text=True)
    assert done.returncode == 1 and "no Entrypoint or Cmd" in done.stderr


def test_layout_labels_links_and_bind_points(image):
    root, skipped = image
    sd = root / ".singularity.d"
    assert sorted(os.listdir(sd / "actions")) == ["exec", "run", "shell", "start", "test"]
    assert sorted(os.listdir(sd / "env")) == ["01-base.sh", "10-docker2singularity.sh", "90-environment.sh",
                                              "95-apps.sh", "99-base.sh", "99-runtimevars.sh"]
    assert json.loads((sd / "labels.json").read_text()) == {"a": "1", "b": "2"}
    assert os.readlink(root / ".run") == ".singularity.d/actions/run"
    assert os.readlink(root / "singularity") == ".singularity.d/runscript"
    for d in ("cvmfs", "dev", "proc", "sys", "tmp", "var/tmp", "home", "root"):
        assert (root / d).is_dir() and not (root / d).is_symlink()
    assert os.access(sd / "actions" / "run", os.X_OK)


def test_image_files_are_never_overwritten_nor_written_through(image, tmp_path):
    root, skipped = image
    assert (root / "etc" / "hosts").read_text() == "image's own hosts\n"
    assert os.readlink(root / "srv") == "/etc" and "srv" in skipped
    # a second pass changes nothing and reports everything as present
    before = sorted(str(p) for p in root.rglob("*"))
    again = make_apptainer_ready(root, env=["X=1"])
    assert sorted(str(p) for p in root.rglob("*")) == before
    assert ".singularity.d/env/10-docker2singularity.sh" in again


def test_a_hostile_symlinked_singularity_dir_is_not_followed(tmp_path):
    root = tmp_path / "img"
    victim = tmp_path / "victim"
    victim.mkdir()
    root.mkdir()
    os.symlink(str(victim), root / ".singularity.d")
    os.symlink(str(victim), root / "var")
    skipped = make_apptainer_ready(root, env=["A=1"])
    assert list(victim.iterdir()) == []
    assert ".singularity.d/runscript" in skipped and "var/tmp" in skipped
