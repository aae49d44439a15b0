"""Commands as the documentation and scripts write them: shell code blocks of Markdown
files, and the arguments of each `glimpse ...` command in a shell text."""

from __future__ import annotations

import re
import shlex


def shell_blocks(markdown: str) -> str:
    """The fenced code blocks of a Markdown text marked bash, sh or shell, or not marked."""
    fences = re.findall(r"^```(\w*)\n(.*?)^```", markdown, flags=re.S | re.M)
    return "\n".join(body for language, body in fences if language in ("bash", "sh", "shell", ""))


def glimpse_commands(text: str) -> list[list[str]]:
    """The arguments of each `glimpse ...` line of a shell text (continuations joined,
    arrays of flags dropped, $variables made dummies, the `| tail` of a capture dropped)."""
    text = re.sub(r'"\$(@|\{\w+\[@\]\})"', "", text.replace("\\\n", " "))
    commands = []
    for line in text.splitlines():
        found = re.search(r"(?:^|\$\()\s*glimpse (.*)", line)
        if found and not line.lstrip().startswith("#"):
            words = re.sub(r"\$\{?([\w%-]+)\}?", "dummy", found.group(1))
            commands.append(shlex.split(words.split("|")[0].split("#")[0]))
    return commands
