"""soap_lab.records.provenance: git commit, device, versions and time, as every stored result carries them."""
import re
import subprocess

import torch

from soap_lab.records import provenance, store


def test_git_info_reads_the_repository_holding_soap_lab():
    info = provenance.git_info()
    head = subprocess.run(["git", "-C", str(store.REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:  # an unpacked copy without .git: nothing to report, nothing made up
        assert info == {"commit": None, "dirty": None}
        return
    assert info["commit"] == head.stdout.strip() and isinstance(info["dirty"], bool)


def test_git_info_outside_a_repository_is_none(tmp_path):
    assert provenance.git_info(tmp_path) == {"commit": None, "dirty": None}


def test_environment_info_names_device_and_versions():
    env = provenance.environment_info("cpu")
    assert env["device"]["type"] == "cpu" and env["device"]["name"] == env["device"]["cpu"]
    assert env["device"]["torch_threads"] == torch.get_num_threads() and env["device"]["gpu"] is None
    assert env["torch_version"] == torch.__version__ and env["soap_lab_version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", env["python_version"])


def test_provenance_of_a_data_set_has_commit_and_time():
    prov = provenance.provenance()
    assert {"device", "git_commit", "git_dirty", "time", "torch_version"} <= set(prov)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", prov["time"])
