"""LoRA fine-tuning on a tiny pipeline: learning, the cache, exact resume after SIGKILL, diffusers'
LoRA format, two processes, and the CLI's --lora and --prompts."""

import argparse
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from vidgen import VidGenPipeline, load_video
from vidgen.testing import tiny_components, write_shapes_clips
from vidgen.training.train_lora import LORA_WEIGHT_NAME, main, warn_slow_cpu_bf16

ACCELERATE_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    VidGenPipeline(**tiny_components()).save_pretrained(root / "tiny")
    data = root / "data"
    data.mkdir()
    write_shapes_clips(data, 6)
    (data / "broken.mp4").write_bytes(b"not a video")
    (data / "broken.txt").write_text("a red circle moves left")
    return root


def args(setup, out, *extra):
    return [
        "--pretrained_model", str(setup / "tiny"), "--output_dir", str(out), "--data.path", str(setup / "data"),
        "--data.buckets", "[9x32x32]", "--lora.rank", "4", "--lora.alpha", "8", "--train.batch_size", "2",
        "--train.learning_rate", "3e-3", "--train.lr_scheduler", "cosine", "--train.lr_warmup_steps", "2",
        "--train.first_frame_p", "0.3", "--train.vdt_mask_p", "0.3", "--logging.every", "1",
        "--logging.report_to", "none", *map(str, extra),
    ]  # fmt: skip


def lora_weights(out):
    return load_file(out / LORA_WEIGHT_NAME)


def test_trains_caches_once_and_skips_broken_files(setup, tmp_path):
    with pytest.warns(UserWarning, match=r"skipped 1 unusable file\(s\): broken.mp4: unreadable"):
        main(args(setup, tmp_path / "a", "--train.max_steps", 30, "--validation.prompts", "[a red circle stays still]",
                  "--validation.every", 20, "--validation.num_inference_steps", 2))  # fmt: skip
    videos = sorted(
        p.relative_to(tmp_path / "a" / "validation") for p in (tmp_path / "a").glob("validation/*/*")
    )
    assert [str(v) for v in videos] == [f"step_0000{n}/00_a-red-circle-stays-still.mp4" for n in (20, 30)]
    rows = (tmp_path / "a" / "logs" / "train_log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert len(losses) == 30
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])  # it learns
    entries = sorted((setup / "data" / ".vidgen_cache").glob("*/*.safetensors"))
    assert len(entries) == 7  # 6 clips + the empty prompt
    stamps = [e.stat().st_mtime_ns for e in entries]
    main(args(setup, tmp_path / "b", "--train.max_steps", 1))  # a later run reuses them
    assert [e.stat().st_mtime_ns for e in entries] == stamps
    main(args(setup, tmp_path / "c", "--train.max_steps", 1, "--data.buckets", "[5x32x32]"))  # new entries
    assert len(list((setup / "data" / ".vidgen_cache").glob("*/*.safetensors"))) == 13


def test_empty_dataset_and_reused_output_dir_are_clear_errors(setup, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.mp4").write_bytes(b"junk")
    (empty / "x.txt").write_text("caption")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no usable clips"):
        main(args(setup, tmp_path / "o", "--data.path", empty, "--train.max_steps", 1))
    main(args(setup, tmp_path / "run", "--train.max_steps", 2))
    with pytest.raises(ValueError, match="already holds a run"):
        main(args(setup, tmp_path / "run", "--train.max_steps", 2, "--checkpoints.resume", "none"))
    with pytest.raises(ValueError, match=r"lora\.rank.*differ"):
        main(args(setup, tmp_path / "run", "--train.max_steps", 4, "--lora.rank", 8))
    with pytest.raises(ValueError, match="global batch of 2"):
        main(args(setup, tmp_path / "run", "--train.max_steps", 4, "--train.batch_size", 4))
    with pytest.raises(ValueError, match="below the run's last checkpoint"):
        main(args(setup, tmp_path / "run", "--train.max_steps", 1))


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import vidgen.training.train_lora as t

    mode, at = sys.argv[1], int(sys.argv[2])
    calls = {"loss": 0, "save": 0}
    loss, save = t.flow_matching_loss, torch.save

    def killing_loss(*a, **k):  # dies in the middle of a training step
        calls["loss"] += 1
        if mode == "step" and calls["loss"] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return loss(*a, **k)

    def killing_save(obj, path, *a, **k):  # dies while a checkpoint is half-written
        save(obj, path, *a, **k)
        if mode == "checkpoint" and str(path).endswith("optimizer.pt"):
            calls["save"] += 1
            if calls["save"] == at:
                os.kill(os.getpid(), signal.SIGKILL)

    t.flow_matching_loss, t.torch.save = killing_loss, killing_save
    t.main(sys.argv[3:])
    """
)


def test_resume_after_sigkill_matches_an_uninterrupted_run(setup, tmp_path):
    common = ("--train.max_steps", 12, "--checkpoints.every", 4, "--checkpoints.keep_last", 2)
    main(args(setup, tmp_path / "straight", *common))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    out = tmp_path / "killed"

    def run(mode, at):
        return subprocess.run([sys.executable, script, mode, str(at), *args(setup, out, *common)],
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    first = run("step", 7)  # killed in step 7: checkpoint 4 is the last one
    assert first.returncode == -9, first.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000004"]
    second = run("checkpoint", 1)  # resumes at 4, killed while writing checkpoint 8
    assert second.returncode == -9, second.stderr[-2000:]
    leftovers = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert leftovers[-1] == "step_000004" and any(n.startswith(".step_000008") for n in leftovers)
    third = run("none", 0)  # resumes at 4 again (the half-written 8 is ignored) and finishes
    assert third.returncode == 0, third.stderr[-2000:]
    a, b = lora_weights(tmp_path / "straight"), lora_weights(out)
    assert a.keys() == b.keys() and len(a) > 0
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000008", "step_000012"]
    steps = [int(r.split(",")[0]) for r in (out / "logs" / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 13))  # the interrupted attempts' rows past their checkpoint are gone


def test_result_loads_in_diffusers_format_with_scale_fuse_and_unfuse(setup, tmp_path):
    main(args(setup, tmp_path / "run", "--train.max_steps", 8, "--checkpoints.every", 8))
    pipe = VidGenPipeline.from_pretrained(setup / "tiny")
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe("a red circle moves right", num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0)).frames  # fmt: skip

    base = generate()
    pipe.load_lora_weights(tmp_path / "run", adapter_name="concept")
    with_lora = generate()
    assert np.abs(with_lora - base).max() > 1e-3
    # The adapter's scale (alpha / rank = 2) came with the file: the same as the trained model.
    reference = VidGenPipeline.from_pretrained(setup / "tiny")
    reference.set_progress_bar_config(disable=True)
    reference.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v",
                                                 "to_out.0", "ff.net.0.proj", "ff.net.2"]))  # fmt: skip
    set_peft_model_state_dict(
        reference.transformer, load_file(tmp_path / "run/checkpoints/step_000008/adapter.safetensors")
    )
    expected = reference("a red circle moves right", num_inference_steps=2, output_type="np",
                         generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    np.testing.assert_allclose(with_lora, expected, atol=1e-6)
    pipe.set_adapters(["concept"], [0.0])
    np.testing.assert_allclose(generate(), base, atol=1e-6)
    pipe.set_adapters(["concept"], [1.0])
    pipe.fuse_lora()
    np.testing.assert_allclose(generate(), with_lora, atol=1e-4)
    pipe.unfuse_lora()
    pipe.set_adapters(["concept"], [0.0])
    np.testing.assert_allclose(generate(), base, atol=1e-4)


def test_two_processes_equal_one_process_with_the_same_global_batch(setup, tmp_path):
    common = ("--train.max_steps", 4, "--checkpoints.every", 4)
    main(args(setup, tmp_path / "one", *common, "--train.batch_size", 4))
    # Accumulation and gradient checkpointing change how, not what, is computed.
    main(args(setup, tmp_path / "accumulated", *common, "--train.gradient_accumulation_steps", 2,
              "--train.gradient_checkpointing", "true"))  # fmt: skip
    a, b = lora_weights(tmp_path / "one"), lora_weights(tmp_path / "accumulated")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    two = subprocess.run(
        [*ACCELERATE_2, "-m", "vidgen.training.train_lora", *args(setup, tmp_path / "two", *common)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = lora_weights(tmp_path / "one"), lora_weights(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert max(a[k].abs().max().item() for k in a if "lora_B" in k) > 1e-3  # it did train


def test_cli_lora_flags_and_prompts_split_across_two_processes(setup, tmp_path):
    main(args(setup, tmp_path / "run", "--train.max_steps", 6))
    cli = [sys.executable, "-m", "vidgen.cli", "t2v", "--model", str(setup / "tiny"), "--steps", "2"]
    outputs = {}
    for name, extra in (("base", []), ("zero", ["--lora", tmp_path / "run", "--lora-scale", "0"]),
                        ("full", ["--lora", tmp_path / "run"])):  # fmt: skip
        r = subprocess.run([*cli, "--prompt", "a red circle", "--output", tmp_path / name, *map(str, extra)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        outputs[name] = np.stack([np.asarray(f) for f in load_video(tmp_path / name)]).astype(int)
    assert np.array_equal(outputs["zero"], outputs["base"])
    assert np.abs(outputs["full"] - outputs["base"]).max() > 0
    evaluated = subprocess.run(
        [sys.executable, "-m", "vidgen.cli", "eval", "--model", str(setup / "tiny"), "--num", "1", "--tasks", "t2v",
         "--steps", "1", "--lora", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert evaluated.returncode == 0 and "| t2v |" in evaluated.stdout, evaluated.stderr[-2000:]

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "a red circle moves right\n# a comment\n\na blue square stays still\na green triangle\n"
    )
    r = subprocess.run(
        [*ACCELERATE_2, "-m", "vidgen.cli", "t2v", "--model", str(setup / "tiny"), "--steps", "2",
         "--prompts", str(prompts), "--output-dir", str(tmp_path / "many")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    names = [
        "0000_a-red-circle-moves-right.mp4",
        "0001_a-blue-square-stays-still.mp4",
        "0002_a-green-triangle.mp4",
    ]
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == names
    written = [line for line in r.stdout.splitlines() if "wrote" in line]
    assert len(written) == 3 and {line.split("]")[0] for line in written} == {"[process 0", "[process 1"}
    # The same video as one process writes for that line (seed + line index).
    one = subprocess.run([*cli, "--prompts", str(prompts), "--output-dir", str(tmp_path / "single")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    for name in names:
        a = np.stack([np.asarray(f) for f in load_video(tmp_path / "many" / name)]).astype(int)
        b = np.stack([np.asarray(f) for f in load_video(tmp_path / "single" / name)]).astype(int)
        assert np.abs(a - b).mean() < 0.5  # equal up to float noise (thread counts differ) and H.264
    again = subprocess.run([*cli, "--prompts", str(prompts), "--output-dir", str(tmp_path / "single")],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 2 and "already holds 3 of the videos" in again.stderr


@pytest.fixture(scope="module")
def word_data(setup):
    """The tiny clips with a word the tokenizer does not know ("zorp") in every other caption."""
    data = setup / "zorp"
    data.mkdir()
    write_shapes_clips(data, 4)
    for i in (0, 2):
        caption = (data / f"clip{i}.txt").read_text()
        (data / f"clip{i}.txt").write_text(
            caption.replace(" moves", " zorp moves").replace(" stays", " zorp stays")
        )
    return data


def word_args(setup, word_data, out, *extra):
    return [*args(setup, out, "--data.path", word_data, "--textual_inversion.tokens", "[zorp]",
                  "--textual_inversion.initializer", "[right down]", "--textual_inversion.learning_rate", "3e-2",
                  "--train.lr_scheduler", "constant", *extra)]  # fmt: skip


def test_new_words_are_learned_resumed_and_load_with_load_textual_inversion(setup, word_data, tmp_path):
    from vidgen.cli import _load_lora
    from vidgen.training.config import TextualInversionConfig
    from vidgen.training.train_lora import LEARNED_EMBEDS_NAME, LearnedWords

    main(word_args(setup, word_data, tmp_path / "straight", "--train.max_steps", 8, "--checkpoints.every", 4))
    # The same run stopped at step 4 and resumed: the same LoRA and the same word.
    main(word_args(setup, word_data, tmp_path / "resumed", "--train.max_steps", 4, "--checkpoints.every", 4))
    main(word_args(setup, word_data, tmp_path / "resumed", "--train.max_steps", 8, "--checkpoints.every", 4))
    learned = load_file(tmp_path / "straight" / LEARNED_EMBEDS_NAME)
    resumed = load_file(tmp_path / "resumed" / LEARNED_EMBEDS_NAME)
    a, b = lora_weights(tmp_path / "straight"), lora_weights(tmp_path / "resumed")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert (learned["zorp"] - resumed["zorp"]).abs().max() <= 1e-6

    pipe = VidGenPipeline.from_pretrained(setup / "tiny")
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()  # (V, D)
    assert list(learned) == ["zorp"] and learned["zorp"].shape == table.shape[1:]
    ids = pipe.tokenizer("right down", add_special_tokens=False).input_ids
    start = table[ids].mean(0)
    assert (learned["zorp"] - start).abs().max() > 1e-3  # it moved from the mean of "right" and "down"
    prompt = ["a red circle zorp moves left"]
    unknown, _ = pipe._text_embeddings(prompt, 16, "cpu", torch.float32)  # zorp is <unk> here
    pipe.load_textual_inversion(tmp_path / "straight")
    new_table = pipe.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(new_table[: len(table)], table, rtol=0, atol=0)  # the known words untouched
    loaded, mask = pipe._text_embeddings(prompt, 16, "cpu", torch.float32)
    assert (loaded - unknown).abs().max() > 1e-4

    # What training encoded is what the pipeline encodes with the loaded word.
    fresh = VidGenPipeline.from_pretrained(setup / "tiny")
    words = LearnedWords(fresh, TextualInversionConfig(tokens=["zorp"], initializer=["right down"]))
    with torch.no_grad():
        words.weight.copy_(learned["zorp"][None])
        empty = torch.zeros(1, 16, loaded.shape[-1]), torch.zeros(1, 16, dtype=torch.bool)
        encoded, _ = words.encode(fresh, prompt, *empty)
    torch.testing.assert_close(encoded, loaded, rtol=0, atol=1e-6)

    # The CLI's --lora loads the word from the same folder.
    cli_pipe = VidGenPipeline.from_pretrained(setup / "tiny")
    _load_lora(cli_pipe, argparse.Namespace(lora=str(tmp_path / "straight"), lora_scale=None))
    via_cli, _ = cli_pipe._text_embeddings(prompt, 16, "cpu", torch.float32)
    torch.testing.assert_close(via_cli, loaded, rtol=0, atol=0)


def test_a_word_of_several_vectors_trains_and_loads_as_a_multi_vector_word(setup, word_data, tmp_path):
    from vidgen.training.config import TextualInversionConfig
    from vidgen.training.train_lora import LEARNED_EMBEDS_NAME, LearnedWords

    two = ["--textual_inversion.num_vectors", 2]
    main(word_args(setup, word_data, tmp_path / "two", *two, "--train.max_steps", 4))
    learned = load_file(tmp_path / "two" / LEARNED_EMBEDS_NAME)
    pipe = VidGenPipeline.from_pretrained(setup / "tiny")
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()  # (V, D)
    assert list(learned) == ["zorp"] and learned["zorp"].shape == (2, table.shape[1])
    right, down = pipe.tokenizer("right down", add_special_tokens=False).input_ids
    starts = table[[right, down]]  # vector i starts at initializer word i
    assert all((learned["zorp"][i] - starts[i]).abs().max() > 1e-4 for i in range(2))  # both moved

    pipe.load_textual_inversion(tmp_path / "two")
    prompt = ["a red circle zorp moves left"]
    ids = pipe.tokenize(prompt, 16).input_ids[0]
    assert pipe.tokenizer.convert_ids_to_tokens(ids[:6].tolist())[3:] == ["zorp", "zorp_1", "moves"]
    loaded, _ = pipe._text_embeddings(prompt, 16, "cpu", torch.float32)
    fresh = VidGenPipeline.from_pretrained(setup / "tiny")
    config = TextualInversionConfig(tokens=["zorp"], initializer=["right down"], num_vectors=2)
    words = LearnedWords(fresh, config)
    torch.testing.assert_close(words.weight.detach(), starts, rtol=0, atol=0)
    with torch.no_grad():
        words.weight.copy_(learned["zorp"])
        empty = torch.zeros(1, 16, loaded.shape[-1]), torch.zeros(1, 16, dtype=torch.bool)
        encoded, _ = words.encode(fresh, prompt, *empty)
    torch.testing.assert_close(encoded, loaded, rtol=0, atol=1e-6)  # what training encoded
    with pytest.raises(ValueError, match=r"textual_inversion.num_vectors must be >= 1; got 0"):
        main(word_args(setup, word_data, tmp_path / "bad", "--textual_inversion.num_vectors", 0))


def test_new_words_refuse_known_words_and_unknown_initializers(setup, word_data, tmp_path):
    with pytest.raises(ValueError, match=r"textual_inversion.tokens: 'red' must be one word the tokenizer"):
        main(word_args(setup, word_data, tmp_path / "a", "--textual_inversion.tokens", "[red]"))
    with pytest.raises(
        ValueError, match=r"textual_inversion.initializer 'sideways': every word must be known"
    ):
        main(word_args(setup, word_data, tmp_path / "b", "--textual_inversion.initializer", "[sideways]"))
    with pytest.raises(
        ValueError, match=r"textual_inversion.initializer must be empty or name words for every"
    ):
        main(word_args(setup, word_data, tmp_path / "c", "--textual_inversion.initializer", "[red, blue]"))
    assert not any((tmp_path / n / LORA_WEIGHT_NAME).exists() for n in "abc")


def test_text_encoder_lora_trains_resumes_and_loads_with_load_lora_weights(setup, word_data, tmp_path):
    from vidgen.cli import _load_lora
    from vidgen.training.config import TextEncoderLoraConfig
    from vidgen.training.train_lora import add_text_encoder_lora, encode_captions

    def run(out, steps):
        main(word_args(setup, word_data, tmp_path / out, "--text_encoder_lora.rank", 4,
                       "--text_encoder_lora.learning_rate", 1e-2, "--train.max_steps", steps,
                       "--checkpoints.every", 4))  # fmt: skip

    run("straight", 8)
    run("resumed", 4)  # stopped at step 4 and resumed: the same transformer LoRA, text-encoder LoRA and word
    run("resumed", 8)
    a, b = lora_weights(tmp_path / "straight"), lora_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    text_keys = [k for k in a if k.startswith("text_encoder.")]
    assert text_keys and len(text_keys) < len(a)  # both components, in one file
    trained = max(a[k].abs().max().item() for k in text_keys if "lora_B" in k)
    assert trained > 1e-4  # B starts at 0

    prompt = ["a red circle zorp moves left"]
    pipe = VidGenPipeline.from_pretrained(setup / "tiny")
    pipe.load_textual_inversion(tmp_path / "straight")
    words_only, _ = pipe._text_embeddings(prompt, 16, "cpu", torch.float32)
    pipe.load_lora_weights(tmp_path / "straight", adapter_name="x")
    loaded, _ = pipe._text_embeddings(prompt, 16, "cpu", torch.float32)
    assert (loaded - words_only).abs().max() > 1e-4
    assert pipe.get_list_adapters() == {"transformer": ["x"], "text_encoder": ["x"]}

    # What training encoded is what the pipeline encodes with the loaded LoRA.
    fresh = VidGenPipeline.from_pretrained(setup / "tiny")
    fresh.load_textual_inversion(tmp_path / "straight")
    add_text_encoder_lora(fresh.text_encoder, TextEncoderLoraConfig(rank=4))
    state = {k.removeprefix("text_encoder."): v for k, v in a.items() if k in text_keys}
    set_peft_model_state_dict(fresh.text_encoder, state)
    with torch.no_grad():
        empty = torch.zeros(1, 16, loaded.shape[-1]), torch.zeros(1, 16, dtype=torch.bool)
        encoded, _ = encode_captions(fresh, prompt, *empty)
    torch.testing.assert_close(encoded, loaded, rtol=0, atol=1e-6)

    # Scale, fuse and unload act on the text encoder too.
    pipe.set_adapters(["x"], [0.0])
    off, _ = pipe._text_embeddings(prompt, 16, "cpu", torch.float32)
    torch.testing.assert_close(off, words_only, rtol=0, atol=1e-6)
    pipe.set_adapters(["x"], [1.0])
    pipe.fuse_lora()
    fused, _ = pipe._text_embeddings(prompt, 16, "cpu", torch.float32)
    torch.testing.assert_close(fused, loaded, rtol=0, atol=1e-5)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    unloaded, _ = pipe._text_embeddings(prompt, 16, "cpu", torch.float32)
    torch.testing.assert_close(unloaded, words_only, rtol=0, atol=1e-5)
    pipe.load_lora_weights(tmp_path / "straight")  # unnamed: one name for both components
    pipe.load_lora_weights(tmp_path / "straight")
    names = ["default_0", "default_1"]
    assert pipe.get_list_adapters() == {"transformer": names, "text_encoder": names}

    # The CLI's --lora loads both components and the word.
    cli_pipe = VidGenPipeline.from_pretrained(setup / "tiny")
    _load_lora(cli_pipe, argparse.Namespace(lora=str(tmp_path / "straight"), lora_scale=None))
    via_cli, _ = cli_pipe._text_embeddings(prompt, 16, "cpu", torch.float32)
    torch.testing.assert_close(via_cli, loaded, rtol=0, atol=1e-6)

    with pytest.raises(ValueError, match=r"text_encoder_lora.rank must be >= 0"):
        main(args(setup, tmp_path / "bad", "--text_encoder_lora.rank", -1))
    with pytest.raises(ValueError, match=r"text_encoder_lora.target_modules \['nowhere'\]"):
        main(args(setup, tmp_path / "bad2", "--text_encoder_lora.rank", 2,
                  "--text_encoder_lora.target_modules", "[nowhere]"))  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_new_options_at_their_defaults_keep_older_runs_resumable():
    from vidgen.training.config import load_config
    from vidgen.training.train_lora import config_digest

    # A run's checkpoints hold this digest; runs written before text_encoder_lora and
    # textual_inversion.num_vectors existed lack them, and must still resume.
    base = ["--output_dir", "o", "--data.path", "d"]
    digest = config_digest(load_config(None, base))
    assert "text_encoder_lora" not in digest and "num_vectors" not in digest["textual_inversion"]
    assert "binding_weight" not in digest["train"]
    changed = config_digest(load_config(None, [*base, "--text_encoder_lora.rank", "4"]))
    assert changed["text_encoder_lora"]["rank"] == 4  # set, they count: a change is refused


def test_the_example_config_loads_and_documents_every_key():
    import yaml

    from vidgen.training.config import load_config

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "lora_example.yaml")

    def keys(d, prefix=""):
        return {
            k
            for name, v in d.items()
            for k in (keys(v, f"{prefix}{name}.") if isinstance(v, dict) else [prefix + name])
        }

    config = load_config(path)
    with open(path) as f:
        assert keys(yaml.safe_load(f)) == keys(config.to_dict())


def test_load_textual_inversion_reads_a_file_of_several_words(setup, tmp_path):
    from safetensors.torch import save_file

    pipe = VidGenPipeline.from_pretrained(setup / "tiny")
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()  # (V, D)
    words = {"zorp": torch.randn(table.shape[1]), "blick": torch.randn(table.shape[1])}
    save_file(words, tmp_path / "learned_embeds.safetensors")
    pipe.load_textual_inversion(tmp_path)  # the folder, as train-lora leaves it
    new_table = pipe.text_encoder.get_input_embeddings().weight
    for word, vector in words.items():
        (i,) = pipe.tokenizer("a " + word, add_special_tokens=False).input_ids[1:]
        torch.testing.assert_close(new_table[i], vector, rtol=0, atol=0)
    torch.testing.assert_close(new_table[: len(table)], table, rtol=0, atol=0)


def test_motion_weights_rise_on_moving_tokens_and_stay_1_where_nothing_moves():
    from vidgen.training.train_lora import motion_weights

    background, thing = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 3.0, 0.0])
    x = background.repeat(3, 4, 1)  # (F, H*W, D) on a (3, 2, 2) grid
    for frame, token in enumerate((0, 1, 3)):  # the thing moves 0 -> 1 -> 3; token 2 never changes
        x[frame, token] = thing
    w = motion_weights(x.flatten(0, 1), (3, 2, 2), 8.0).view(3, 4)
    assert torch.all(w[:, 2] == 1) and w.max() == 9
    assert w[1, 0] == w[1, 1] == 9 and w[0, 2] == 1  # where it left and where it arrived
    still = background.repeat(12, 1) + 0.01 * torch.randn(12, 4)
    assert torch.all(motion_weights(still.repeat(3, 1), (3, 2, 2), 8.0) == 1)  # a still clip: no weight
    assert torch.all(motion_weights(x.flatten(0, 1), (3, 2, 2), 0.0) == 1)


def test_the_loss_is_the_weighted_mean_over_generated_tokens():
    from types import SimpleNamespace

    from vidgen.training.train_lora import flow_matching_loss

    target = torch.randn(2, 6, 3)
    mask = torch.tensor([[1, 1, 1, 0, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.float)
    weight = torch.tensor([[1, 9, 1, 1, 5, 1], [1, 1, 1, 1, 1, 2]], dtype=torch.float)
    batch = {"xt": target, "target": target, "timestep": torch.zeros(2, 6), "mask": mask, "weight": weight,
             "grid": (1, 2, 3), "embeds": torch.zeros(2, 1, 4), "text_mask": torch.ones(2, 1)}  # fmt: skip
    model = lambda hidden_states, **k: (torch.zeros_like(hidden_states),)  # noqa: E731
    pipe = SimpleNamespace(transformer_extra_kwargs=lambda frame_rate: {})
    loss = flow_matching_loss(model, pipe, batch, "cpu", 8.0)
    per_token, m = (target**2).mean(-1), mask * weight
    assert torch.allclose(loss, ((per_token * m).sum(1) / m.sum(1)).mean())
    assert not torch.allclose(loss, ((per_token * mask).sum(1) / mask.sum(1)).mean())


def test_noise_level_sampling_and_motion_weight_train_and_refuse_bad_values(setup, tmp_path):
    main(args(setup, tmp_path / "a", "--train.max_steps", 2, "--train.timestep_sampling", "logit_normal",
              "--train.logit_mean", 1.0, "--train.motion_weight", 4))  # fmt: skip
    assert len(lora_weights(tmp_path / "a")) > 0
    with pytest.raises(
        ValueError, match="train.timestep_sampling must be one of uniform, logit_normal, mode"
    ):
        main(args(setup, tmp_path / "b", "--train.timestep_sampling", "cosine"))
    with pytest.raises(ValueError, match=r"train.motion_weight must be >= 0; got -1.0"):
        main(args(setup, tmp_path / "c", "--train.motion_weight", -1))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_bf16_on_a_cpu_without_bf16_instructions_warns(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t\t: fpu sse2 avx avx2 fma\n")
    amx = tmp_path / "amx"
    amx.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16\n")
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match="mixed_precision is bf16 but this CPU has no bf16"):
        assert warn_slow_cpu_bf16("bf16", cpu, cpuinfo=avx2)
    assert not warn_slow_cpu_bf16("bf16", cpu, cpuinfo=amx)
    assert not warn_slow_cpu_bf16("no", cpu, cpuinfo=avx2)
    assert not warn_slow_cpu_bf16("bf16", cpu, cpuinfo=tmp_path / "missing")


@pytest.fixture(scope="module")
def pair_data(setup):
    """Tiny clips of two objects, one moving "diagonally" (a word the tokenizer does not know)."""
    from vidgen.data import shapes
    from vidgen.video_io import export_to_video

    data = setup / "pairs"
    data.mkdir()
    for i, caption in enumerate(["a red circle moves diagonally and a blue square moves down",
                                 "a green triangle moves diagonally and a white circle moves left",
                                 "a yellow square moves diagonally"]):  # fmt: skip
        clip = shapes.render_clip(shapes.parse_caption(caption), i, height=32, width=32, num_frames=9)
        export_to_video(clip.frames, data / f"pair{i}.mp4", fps=8)
        (data / f"pair{i}.txt").write_text(caption)
    return data


def test_owners_by_color_finds_each_object_of_a_two_object_caption():
    from vidgen.data import shapes
    from vidgen.training.grounding import owners_by_color

    caption = "a red circle moves diagonally and a blue square moves down"
    clip = shapes.render_clip(shapes.parse_caption(caption), 5)
    masks = shapes.render_masks(clip.objects, clip.centers, clip.radii, 64, 64).transpose(1, 0, 2, 3)
    one, two = shapes.object_tokens(masks, 4, 8)  # (F, H, W) each, from the renderer's own masks
    rendered = torch.where(one & ~two, 0, torch.where(two & ~one, 1, -1)).flatten()
    owners = owners_by_color(clip.frames, caption, 4, 8)  # (F * H * W,) from the pixels
    assert owners.shape == (5 * 8 * 8,) and (owners == 0).any() and (owners == 1).any()
    assert torch.equal(owners.long(), rendered)
    # Nothing to bind: one object, two of one color, a caption outside the grammar.
    for other in ("a red circle moves diagonally", "a red circle moves right and a red square moves up", "hello"):
        assert (owners_by_color(clip.frames, other, 4, 8) == -1).all()


def test_binding_loss_trains_logs_and_falls(setup, pair_data, tmp_path):
    out = tmp_path / "b"
    main(args(setup, out, "--data.path", pair_data, "--textual_inversion.tokens", "[diagonally]",
              "--textual_inversion.initializer", "[right down]", "--train.binding_weight", 50,
              "--train.learning_rate", 3e-2, "--train.lr_scheduler", "constant", "--train.caption_dropout", 0,
              "--train.first_frame_p", 0, "--train.vdt_mask_p", 0, "--train.max_steps", 40))  # fmt: skip
    rows = (out / "logs" / "train_log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,binding,seconds"
    binding = [float(r.split(",")[3]) for r in rows[1:]]
    assert len(binding) == 40 and all(b > 0 for b in binding)  # every batch holds a two-object clip
    # It starts at ln 2 (the tiny model's tokens read both phrases alike) and falls as they move to their
    # own phrase: a loss cut off from the adapters' gradients would stay within +-0.004 of it.
    assert abs(np.mean(binding[:3]) - np.log(2)) < 0.003
    assert np.mean(binding[-10:]) < np.log(2) - 0.01
    with pytest.raises(ValueError, match=r"train.binding_weight must be >= 0 \(0: off\); got -1.0"):
        main(args(setup, tmp_path / "c", "--train.binding_weight", -1))
