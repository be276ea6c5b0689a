"""Without an NVIDIA GPU the role detects none and skips cleanly: nothing installed, Docker's config untouched."""


def test_no_gpu_is_detected(host):
    assert host.file("/var/tmp/molecule-gpu-present").content_string.strip() == "false"


def test_toolkit_is_not_installed(host):
    assert not host.package("nvidia-container-toolkit").is_installed
    assert not host.file("/etc/apt/sources.list.d/nvidia-container-toolkit.list").exists


def test_docker_daemon_json_is_untouched(host):
    assert host.file("/etc/docker/daemon.json").content_string == '{"log-driver": "json-file"}'
