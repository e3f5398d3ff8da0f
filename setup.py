"""Build hook: a built runner carries the repo's schemas/ and templates/ inside its package.

The repo's folders stay the single source (users and the docs name `schemas/experiment.schema.json`
and `templates/`); building copies them to `runner/schemas/` and `runner/templates/` in the wheel,
where runner/spec/types.py finds them once runner is installed. MANIFEST.in carries them into an
sdist. Everything else about the package is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = {"schemas": "*.schema.json", "templates": "*.jinja"}  # repo folder: the files copied into runner/<folder>/


class BuildPy(build_py):
    """build_py that also copies the bundled folders into the built package (not in editable mode,
    where runner reads the repo's own folders)."""

    def bundled(self) -> dict[str, str]:
        """Built path -> repo path of every bundled file."""
        return {
            str(Path(self.build_lib, "runner", folder, path.name)): str(path)
            for folder, pattern in BUNDLED.items()
            for path in sorted((ROOT / folder).glob(pattern))
        }

    def run(self) -> None:
        """Build the package as usual, then copy the bundled files into it."""
        super().run()
        if self.editable_mode:
            return
        for target, source in self.bundled().items():
            self.mkpath(str(Path(target).parent))
            self.copy_file(source, target, preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        """What the build writes, the bundled files included."""
        return [*super().get_outputs(include_bytecode), *([] if self.editable_mode else self.bundled())]


setup(cmdclass={"build_py": BuildPy})
