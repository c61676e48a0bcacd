"""Every evdash management command can show its --help (argparse formats each option's help with
%-formatting: a stray % in one option's text breaks the whole page)."""

import pytest
from django.core.management import get_commands, load_command_class

GATEWAY_COMMANDS = sorted(name for name, app in get_commands().items() if app == "gateway")


@pytest.mark.parametrize("name", GATEWAY_COMMANDS)
def test_the_command_shows_its_help(name: str) -> None:
    parser = load_command_class("gateway", name).create_parser("manage.py", name)
    text = parser.format_help()
    assert f"manage.py {name}" in text
