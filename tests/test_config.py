import argparse
from dataclasses import dataclass

import pytest

from inheritune.utils.config import add_config_arguments, from_dict, load_config, option
from inheritune.utils.errors import UserError


@dataclass
class Demo:
    steps: int = option(10, help="number of steps")
    lr: float = option(3e-4, help="learning rate")
    name: str = option("x", help="a name")
    compile: bool = option(False, help="compile")
    layers: list[int] = option([1, 2], help="layers")

    def __post_init__(self):
        if self.steps < 1:
            raise UserError("steps must be >= 1")


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser, Demo)
    args = parser.parse_args(argv)
    return load_config(Demo, args.config, {k: v for k, v in vars(args).items() if k != "config"})


def test_defaults_yaml_and_flags_in_that_order(tmp_path):
    assert parse([]) == Demo()
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("steps: 20\nlr: 0.001\ncompile: true\n")
    config = parse(["--config", str(yaml_file), "--steps", "30", "--layers", "4", "5"])
    assert (config.steps, config.lr, config.compile, config.layers) == (30, 0.001, True, [4, 5])
    assert parse(["--compile"]).compile is True
    assert parse(["--compile", "false"]).compile is False


def test_unknown_key_names_the_nearest(tmp_path):
    with pytest.raises(UserError, match="did you mean 'steps'"):
        from_dict(Demo, {"stepz": 3})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("nmae: y\n")
    with pytest.raises(UserError, match="did you mean 'name'"):
        load_config(Demo, yaml_file)


def test_validation_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="steps must be >= 1"):
        from_dict(Demo, {"steps": 0})
    with pytest.raises(UserError, match="not found"):
        load_config(Demo, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(Demo, bad)
