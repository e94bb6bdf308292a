"""The page `dvc plots show` fills (.dvc/config: plots.html_template): DVC's own page loads vega,
vega-lite and vega-embed from a CDN and stays blank offline; this one carries them inside, so
dvc_plots/index.html renders anywhere, and can be sent as one file.

    python -m chatmill.plotpage      rewrite .dvc/plots/page.html from the npm packages (needs npm)

The libraries are the npm registry's packages at the versions PACKAGES pins (the newest of the major
versions DVC's own page loads), checked against the registry's sha512 integrity of each tarball.
Each package's LICENSE goes beside the page as LICENSE-NAME; vega's npm package has none, so
LICENSE-vega is its repository's at the same tag, kept by hand.
"""

import base64
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

PAGE_DIR = Path(__file__).resolve().parents[1] / ".dvc" / "plots"
PAGE = PAGE_DIR / "page.html"
SOURCE_MAP = re.compile(r"\n?//# sourceMappingURL=\S+\s*\Z")  # the map is not shipped: no request for it


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    script: str  # the browser build inside the package
    integrity: str  # the registry's dist.integrity of the tarball (`npm view NAME@VERSION dist.integrity`)


PACKAGES = (
    Package(
        "vega",
        "5.33.1",
        "build/vega.min.js",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
    ),
    Package(
        "vega-lite",
        "5.23.0",
        "build/vega-lite.min.js",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
    ),
    Package(
        "vega-embed",
        "6.29.0",
        "build/vega-embed.min.js",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
    ),
)
# DVC fills {plot_divs} (one div per plot, whose script calls vegaEmbed) and {refresh_tag}; without a
# {scripts} placeholder its CDN script tags have nowhere to go.
PAGE_TEMPLATE = """<!DOCTYPE html>
<html>
<head>
{{refresh_tag}}
<meta charset="utf-8">
<title>DVC plots</title>
<!-- Written by `python -m chatmill.plotpage`: {packages}
from the npm registry, inline, so that the page renders offline; their licences are beside this
template (.dvc/plots/LICENSE-*). -->
{scripts}
<style>
body {{ font: 14px system-ui, sans-serif; }}
table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def script_tag(package: Package, code: str) -> str:
    digest = hashlib.sha256(code.encode()).hexdigest()
    return (
        f'<script data-package="{package.name}@{package.version}" data-sha256="{digest}">\n{code}\n</script>'
    )


def unpack(package: Package, folder: Path) -> tuple[str, str | None]:
    """The package's browser build and LICENSE (None without one), from its tarball on the registry."""
    subprocess.run(
        ["npm", "pack", f"{package.name}@{package.version}", "--pack-destination", str(folder), "--silent"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tarball = folder / f"{package.name}-{package.version}.tgz"
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if integrity != package.integrity:
        raise SystemExit(f"plotpage: {tarball.name} is not the pinned tarball ({integrity})")
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        code = archive.extractfile(f"package/{package.script}").read().decode()
        license_text = (
            archive.extractfile("package/LICENSE").read().decode() if "package/LICENSE" in names else None
        )
    return SOURCE_MAP.sub("", code), license_text


def main() -> None:
    tags = []
    with tempfile.TemporaryDirectory() as folder:
        for package in PACKAGES:
            code, license_text = unpack(package, Path(folder))
            tags.append(script_tag(package, code))
            license_file = PAGE_DIR / f"LICENSE-{package.name}"
            if license_text is not None:
                license_file.write_text(license_text)
            elif not license_file.is_file():
                raise SystemExit(f"plotpage: {package.name}'s package has no LICENSE; add {license_file}")
    names = ", ".join(f"{package.name}@{package.version}" for package in PACKAGES)
    PAGE.write_text(PAGE_TEMPLATE.format(packages=names, scripts="\n".join(tags)))
    print(f"plotpage: wrote {PAGE} with {names}", file=sys.stderr)


if __name__ == "__main__":
    main()
