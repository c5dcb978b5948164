"""Tests of ``vtn fetch`` (vtn.data.resources): verification and extraction logic with fake
archives (the downloader is replaced), plus one slow test against the real registry."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from vtn.data import resources
from vtn.io import InputError

# 16-hex sha256 prefixes copied from shared/embedded-data-sources.md (measured independently)
DOC_PREFIXES = {
    "Template_05mm_bet.nii.gz": "7d96889867d29803",
    "lpba40.nii.gz": "59c8dfd72a9fc021",
    "lpba40.csv": "8eaa45e8c17e8528",
    "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz": "1f27aabea9f7183d",
    "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv": "8290b044e4198acf",
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": "421a10e872fd6cad",
    "example_ct.nii.gz": "dbd3ae6d614d1d7e",
    "example_seg_fast_force_split.nii.gz": "e8097758e56e7309",
}
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_pinned_digests_agree_with_documented_prefixes():
    members = {out: digest for spec in resources.PACKAGES.values()
               for out, digest in spec["members"].values()}
    for name, prefix in DOC_PREFIXES.items():
        assert members[name].startswith(prefix), name
    assert resources.PACKAGES["totalsegmentator"]["sha256"] == SDIST_SHA256
    assert resources.PACKAGES["totalsegmentator"]["kind"] == "sdist"
    for spec in resources.PACKAGES.values():
        assert len(spec["sha256"]) == 64
        assert all(len(d) == 64 for _, d in spec["members"].values())


@pytest.fixture
def fake(tmp_path):
    """A fake wheel and a fake sdist, a package table pinning them, and a counting downloader."""
    src = tmp_path / "archives"
    src.mkdir()
    wheel_members = {"pkg/data/a.nii.gz": b"AAAA" * 100, "pkg/data/b.csv": b"id;name\n1;x\n",
                     "pkg/data/unwanted.bin": b"zzz"}
    wheel = src / "fakewheel-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in wheel_members.items():
            zf.writestr(name, data)
    sdist_members = {"fakesdist-2.0/tests/ref/ct.nii.gz": b"CT" * 500,
                     "fakesdist-2.0/setup.py": b"print()\n"}
    sdist = src / "fakesdist-2.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for name, data in sdist_members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    packages = {
        "fakewheel": {"version": "1.0", "kind": "wheel", "archive": wheel.name,
                      "sha256": _sha(wheel.read_bytes()),
                      "members": {"pkg/data/a.nii.gz": ("a.nii.gz", _sha(wheel_members["pkg/data/a.nii.gz"])),
                                  "pkg/data/b.csv": ("b.csv", _sha(wheel_members["pkg/data/b.csv"]))}},
        "fakesdist": {"version": "2.0", "kind": "sdist", "archive": sdist.name,
                      "sha256": _sha(sdist.read_bytes()),
                      "members": {"fakesdist-2.0/tests/ref/ct.nii.gz":
                                  ("ct.nii.gz", _sha(sdist_members["fakesdist-2.0/tests/ref/ct.nii.gz"]))}},
    }
    calls = []

    def downloader(name, version, kind, dest):
        calls.append((name, version, kind))
        shutil.copy(src / packages[name]["archive"], Path(dest) / packages[name]["archive"])

    return packages, downloader, calls, wheel_members, sdist_members


def test_fetch_extracts_only_members_and_writes_manifest(fake, tmp_path):
    packages, downloader, calls, wm, sm = fake
    out = tmp_path / "res"
    res = resources.fetch(out, ["fakewheel", "fakesdist"], packages=packages, downloader=downloader)
    assert [r["downloaded"] for r in res] == [True, True]
    assert calls == [("fakewheel", "1.0", "wheel"), ("fakesdist", "2.0", "sdist")]
    assert sorted(p.name for p in (out / "fakewheel").iterdir()) == ["MANIFEST.json", "a.nii.gz", "b.csv"]
    assert (out / "fakewheel" / "a.nii.gz").read_bytes() == wm["pkg/data/a.nii.gz"]
    assert sorted(p.name for p in (out / "fakesdist").iterdir()) == ["MANIFEST.json", "ct.nii.gz"]
    assert (out / "fakesdist" / "ct.nii.gz").read_bytes() == sm["fakesdist-2.0/tests/ref/ct.nii.gz"]
    man = json.loads((out / "fakesdist" / "MANIFEST.json").read_text())
    assert man["version"] == "2.0" and man["archive_sha256"] == packages["fakesdist"]["sha256"]
    assert man["members"]["ct.nii.gz"]["member"] == "fakesdist-2.0/tests/ref/ct.nii.gz"
    # no archive left in the resources folder
    assert not list(out.rglob("*.whl")) and not list(out.rglob("*.tar.gz"))


def test_no_download_when_present_and_verified(fake, tmp_path):
    packages, downloader, calls, _, _ = fake
    out = tmp_path / "res"
    resources.fetch(out, ["fakewheel"], packages=packages, downloader=downloader)

    def forbidden(*args):
        raise AssertionError("downloader called although the members are present")

    res = resources.fetch(out, ["fakewheel"], packages=packages, downloader=forbidden)
    assert res[0]["downloaded"] is False
    # a tampered member is detected and fetched again
    (out / "fakewheel" / "b.csv").write_bytes(b"tampered")
    res = resources.fetch(out, ["fakewheel"], packages=packages, downloader=downloader)
    assert res[0]["downloaded"] is True and len(calls) == 2
    assert (out / "fakewheel" / "b.csv").read_bytes() == b"id;name\n1;x\n"


def test_archive_hash_mismatch_is_an_error(fake, tmp_path):
    packages, downloader, _, _, _ = fake
    packages["fakesdist"]["sha256"] = "0" * 64
    with pytest.raises(RuntimeError, match=r"fakesdist: sha256 mismatch"):
        resources.fetch(tmp_path / "res", ["fakesdist"], packages=packages, downloader=downloader)
    assert not (tmp_path / "res" / "fakesdist" / "ct.nii.gz").exists()


def test_member_hash_mismatch_and_missing_member(fake, tmp_path):
    packages, downloader, _, _, _ = fake
    member = "pkg/data/b.csv"
    packages["fakewheel"]["members"][member] = ("b.csv", "f" * 64)
    with pytest.raises(RuntimeError, match=r"fakewheel: member pkg/data/b.csv has sha256"):
        resources.fetch(tmp_path / "r1", ["fakewheel"], packages=packages, downloader=downloader)
    del packages["fakewheel"]["members"][member]
    packages["fakewheel"]["members"]["pkg/data/nothere.nii.gz"] = ("nothere.nii.gz", "0" * 64)
    with pytest.raises(RuntimeError, match=r"fakewheel: archive .* lacks member"):
        resources.fetch(tmp_path / "r2", ["fakewheel"], packages=packages, downloader=downloader)


def test_groups_and_unknown_names(fake, tmp_path, monkeypatch):
    assert resources._resolve(["liver"], resources.PACKAGES) == ["totalsegmentator"]
    assert resources._resolve(["brain"], resources.PACKAGES) == ["deepmriprep", "autoafids"]
    assert resources._resolve(None, resources.PACKAGES) == ["totalsegmentator", "deepmriprep",
                                                            "autoafids"]
    assert resources._resolve(["liver", "all"], resources.PACKAGES)[0] == "totalsegmentator"
    with pytest.raises(InputError, match="unknown resource 'kidney'"):
        resources.fetch(tmp_path, ["kidney"])


def test_unreachable_registry_gives_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setattr(resources, "PACKAGES", {"autoafids": dict(resources.PACKAGES["autoafids"])})
    rc = resources.cli(["--out", str(tmp_path / "res"), "--only", "autoafids"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "autoafids==0.1.4: pip download failed" in err and "registry" in err


def test_cli_reports_present(fake, tmp_path, monkeypatch, capsys):
    packages, downloader, _, _, _ = fake
    monkeypatch.setattr(resources, "PACKAGES", packages)
    monkeypatch.setattr(resources, "pip_download", downloader)
    assert resources.cli(["--out", str(tmp_path), "--only", "fakewheel"]) == 0
    assert resources.cli(["--out", str(tmp_path), "--only", "fakewheel"]) == 0
    assert "fakewheel: present and verified" in capsys.readouterr().out


@pytest.mark.slow
def test_real_fetch_liver(tmp_path):
    """Downloads totalsegmentator's 38 MB sdist from the registry and verifies it."""
    res = resources.fetch(tmp_path, ["liver"])
    assert res[0]["downloaded"] is True
    d = tmp_path / "totalsegmentator"
    assert sorted(p.name for p in d.iterdir()) == [
        "MANIFEST.json", "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz",
        "map_to_binary.py"]
    assert resources.fetch(tmp_path, ["liver"])[0]["downloaded"] is False
