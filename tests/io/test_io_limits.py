"""The voxel limit: its default, the environment variable, and the error it gives."""

from __future__ import annotations

import pytest

from medsight.errors import ConfigError, ImageTooLargeError
from medsight.io.limits import (
    CLI_MAX_VOXELS,
    SERVICE_MAX_VOXELS,
    check_voxels,
    default_max_voxels,
    resolve_max_voxels,
)


def test_defaults_are_a_1024_cube_for_the_cli_and_stricter_for_the_service() -> None:
    assert CLI_MAX_VOXELS == 1024**3 and SERVICE_MAX_VOXELS == 2**26
    assert SERVICE_MAX_VOXELS < CLI_MAX_VOXELS


def test_default_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDSIGHT_MAX_VOXELS", raising=False)
    assert default_max_voxels() == CLI_MAX_VOXELS
    monkeypatch.setenv("MEDSIGHT_MAX_VOXELS", "123456")
    assert default_max_voxels() == 123456
    assert resolve_max_voxels(None) == 123456 and resolve_max_voxels(77) == 77


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "lots", "2**26"])
def test_a_bad_environment_value_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MEDSIGHT_MAX_VOXELS", value)
    with pytest.raises(ConfigError) as err:
        default_max_voxels()
    assert str(err.value).startswith("MEDSIGHT_MAX_VOXELS: must be a positive whole number")
    assert repr(value) in str(err.value)


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_a_bad_argument_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="max_voxels: must be a positive whole number"):
        resolve_max_voxels(value)  # type: ignore[arg-type]


def test_the_error_states_the_declared_size_the_limit_and_the_fix() -> None:
    with pytest.raises(ImageTooLargeError) as err:
        check_voxels("big.nii.gz", (1024, 1024, 512), SERVICE_MAX_VOXELS)
    assert str(err.value) == (
        "big.nii.gz: the header declares 1024x1024x512 = 536,870,912 voxels, more than the limit of "
        "67,108,864; crop or downsample it, or raise the limit with MEDSIGHT_MAX_VOXELS (medsight serve: --max-voxels)"
    )


def test_exactly_the_limit_passes_one_more_is_refused() -> None:
    check_voxels("x.png", (8, 8, 3), 192)
    with pytest.raises(ImageTooLargeError, match="8x8x3 = 192 voxels, more than the limit of 191"):
        check_voxels("x.png", (8, 8, 3), 191)
