"""One namespace: `pipelines/` and `schedulers/` install as `vidgen.pipelines` / `vidgen.schedulers`."""

import subprocess
import sys


def test_only_the_vidgen_namespace_is_installed(tmp_path):
    code = (
        "import importlib.util as u, vidgen, vidgen.pipelines, vidgen.schedulers;"
        "assert u.find_spec('pipelines') is None and u.find_spec('schedulers') is None;"
        "assert vidgen.VidGenPipeline is vidgen.pipelines.VidGenPipeline;"
        "print(vidgen.pipelines.__file__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().replace("\\", "/").endswith("pipelines/__init__.py")


def test_model_index_names_vidgen_components(tmp_path):
    import json

    from vidgen import VidGenPipeline
    from vidgen.testing import tiny_components

    VidGenPipeline(**tiny_components()).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["transformer"] == ["vidgen", "VidGenTransformer3DModel"]
    assert index["scheduler"] == ["vidgen", "VidGenFlowMatchScheduler"]
    assert index["vae"] == ["diffusers", "AutoencoderKLLTXVideo"]
