"""Reading YAML as plain data: the one reader of configs, recipes, params entries and checksum files.

Anchors and aliases are refused, floats follow YAML 1.2 (`1e-3`), every value must be a string, number,
bool, null, list or mapping with string keys, numbers must be finite, and files are bounded in size. Any
fault is one ConfigError naming the file. This module imports nothing else of bnnrepro's but the errors,
so a stage that only reads YAML (data, fetch) does not load the model and optimizer registries.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from bnnrepro.errors import InputError, one_line


class ConfigError(InputError, ValueError):
    pass


MAX_CONFIG_BYTES = 1 << 20  # configs and recipe files are a few KB; anything near this is not one


class ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors and aliases, and with YAML 1.2 floats (`1e-3`, `-2E5`)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name, <<) are not allowed: write each value out",
                event.start_mark)
        return super().compose_node(parent, index)


# YAML 1.1 wants a dot in a float ("1.0e-3"); YAML 1.2 and Python also read "1e-3" as one
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))


def _plain(value: Any, source: str, key: str = "") -> Any:
    """Check that loaded YAML is plain data: string keys, str/int/float/bool/null/list/mapping values,
    finite numbers. Dates, binary blobs and NaN/inf are refused here, once, for every key."""
    where = f"{source}: {key}" if key else source
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: key {k!r} is not a string - quote it")
            _plain(v, source, f"{key}.{k}" if key else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, source, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value} is not a finite number - give a finite value")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{where}: a {type(value).__name__} is not allowed - quote the value to make it a string")
    return value


def parse_yaml(text: str, source: str) -> Any:
    """Plain data from YAML text (see ConfigLoader and _plain); any fault is a ConfigError naming `source`."""
    try:
        value = yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {one_line(str(e))} - fix the YAML") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply - flatten the YAML") from None
    return _plain(value, source)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping, read as configs are (bounded size, UTF-8, ConfigLoader)."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes, more than a config's limit of "
                              f"{MAX_CONFIG_BYTES} - give the right file")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found - check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file - give a .yml file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror}) - check the path and its permissions") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}) - save the file as UTF-8") from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level - see config/ for examples")
    return raw
