"""Model files that are not models: every place a checkpoint, model folder or run is read refuses each kind of
bad file with one line naming the file and what is wrong with it (`UnreadableModel`, the CLI's exit status 10),
and a real checkpoint cut short or with flipped bytes lets nothing else escape.

The CLI matrix calls `frontalab.cli.main` in this process (as the console script does, less the interpreter
start): a documented failure returns its status after one line on stderr; anything else would raise here.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontalab.cli import main
from frontalab.training.checkpoints import UnreadableModel, UntrustedPickle, load_checkpoint

BAD_STATUS = 10
TINY = ["model.out_size=64", "tracking.enabled=false", "train.batch_size=2", "train.val_faces=2"]


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory) -> Path:
    """A real checkpoint of a 2-step 64-px thesis trial (G, D, optimisers, stream order, RNG)."""
    folder = tmp_path_factory.mktemp("trained")
    assert main(["train", f"data.path={small_dataset}", *TINY, "train.steps=2", "train.checkpoint_every=2",
                 f"train.checkpoint_dir={folder}"]) == 0
    return folder / "step-000002.pt"


def other_checkpoint(trained: Path, folder: Path, *overrides: str) -> Path:
    """``trained``'s config, with the weights of a decoder built from ``overrides`` instead of its own."""
    from omegaconf import OmegaConf

    from frontalab.losses.papers import build_generator

    ckpt = load_checkpoint(trained)
    other = OmegaConf.merge(OmegaConf.create(ckpt["config"]), OmegaConf.from_dotlist(list(overrides)))
    ckpt["G"] = build_generator(other, ckpt["G"]["standardize.mean"].numel()).state_dict()
    path = folder / f"other-{'-'.join(o.split('=')[1] for o in overrides)}.pt"
    torch.save(ckpt, path)
    return path


def bad_models(trained: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad model input -> (its path, what the one line must say)."""
    whole = trained.read_bytes()
    kinds: dict[str, tuple[bytes | None, str]] = {
        "empty": (b"", "is empty"),
        "truncated": (whole[:1000], "cut short or corrupt"),
        "random": (bytes(range(256)) * 40, "not a checkpoint: binary data"),
        "short_text": (b"hello", "not a checkpoint: a text file"),
        "long_text": (b"model.out_size: 64\n" * 200, "not a checkpoint: a text file"),
    }
    paths = {}
    for kind, (data, says) in kinds.items():
        (folder / f"{kind}.pt").write_bytes(data)
        paths[kind] = (folder / f"{kind}.pt", says)
    with zipfile.ZipFile(folder / "wrong_members.pt", "w") as z:
        z.writestr("archive/readme.txt", "not a model")
    paths["wrong_members"] = (folder / "wrong_members.pt", "zip archive but not a torch checkpoint")
    paths["other_decoder"] = (other_checkpoint(trained, folder, "model.decoder=cole", "model.cole_channels=16",
                                               "model.cole_hidden=16"), "does not fit the ThesisDecoder")
    paths["other_size"] = (other_checkpoint(trained, folder, "model.out_size=128"), "does not fit the ThesisDecoder")
    (folder / "empty_folder").mkdir()
    paths["folder_without_model"] = (folder / "empty_folder", "folder without a model")
    return paths


KINDS = ["empty", "truncated", "random", "short_text", "long_text", "wrong_members", "other_decoder", "other_size",
         "folder_without_model"]


@pytest.fixture(scope="module")
def bad(trained, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return bad_models(trained, tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def encoder():
    from frontalab.models.build import build_encoder

    return build_encoder("dlib-resnet").eval()


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "folder_without_model"])
def test_each_kind_of_bad_file_is_named_by_the_loader(kind, bad, encoder):
    from frontalab.serving.frontalizer import Frontalizer

    path, says = bad[kind]
    with pytest.raises(UnreadableModel, match=says) as refused:
        Frontalizer(path, encoder=encoder)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)
    assert not isinstance(refused.value, UntrustedPickle)  # not code: a damaged or foreign file


def test_the_trained_checkpoint_itself_loads(trained, encoder):
    from frontalab.serving.frontalizer import Frontalizer

    assert Frontalizer(trained, encoder=encoder).step == 2


def run(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_that_reads_a_model_says_what_is_wrong_in_one_line(kind, bad, small_dataset, tmp_path, capsys,
                                                                         lfw_photos):
    path, says = bad[kind]
    if kind == "folder_without_model":
        says = "folder"  # train names the folder it cannot resume from; the others, the missing model
    commands = {
        "evaluate": ["evaluate", "--model", str(path), "--out", str(tmp_path / "report"), "evaluate.track=false"],
        "frontalize": ["frontalize", "--model", str(path), str(lfw_photos[0]), str(tmp_path / "out")],
        "lineup": ["lineup", "--model", str(path), "--people", "2"],
        "train --resume": ["train", "--resume", str(path), f"data.path={small_dataset}", *TINY, "train.steps=3",
                           f"train.checkpoint_dir={tmp_path / 'resumed'}"],
        "train.init_from": ["train", f"data.path={small_dataset}", *TINY, "train.steps=1",
                            f"train.init_from={path}", f"train.checkpoint_dir={tmp_path / 'tuned'}"],
    }
    for command, argv in commands.items():
        status, err = run(capsys, *argv)
        lines = [line for line in err.splitlines() if line.startswith("frontalab ")]
        assert status == BAD_STATUS and len(lines) == 1 and says in lines[0] and str(path) in lines[0], \
            (command, status, err[-2000:])
        assert "Traceback" not in err


def test_a_cut_or_flipped_checkpoint_lets_only_the_documented_error_out(trained, encoder, tmp_path):
    """A property test on the real checkpoint: cut at any offset, or with bytes flipped anywhere (the zip's headers,
    its pickled record, its tensors), it loads or it is refused with `UnreadableModel`; nothing else escapes."""
    from frontalab.serving.frontalizer import Frontalizer

    whole = trained.read_bytes()
    with zipfile.ZipFile(trained) as z:
        record = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    structure = st.one_of(st.integers(record.header_offset, record.header_offset + 100 + record.compress_size),
                          st.integers(max(0, len(whole) - 4096), len(whole) - 1))  # the record; the directory
    flips = st.lists(st.tuples(st.one_of(structure, st.integers(0, len(whole) - 1)), st.integers(1, 255)),
                     min_size=1, max_size=4)
    damaged = tmp_path / "damaged.pt"

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(cut=st.one_of(st.none(), st.integers(0, len(whole) - 1)), flips=flips)
    def load_damaged(cut, flips):
        data = bytearray(whole)
        for at, mask in flips:
            data[at] ^= mask
        damaged.write_bytes(bytes(data[:cut] if cut is not None else data))
        try:
            Frontalizer(damaged, encoder=encoder)
        except UnreadableModel as err:
            assert str(damaged) in str(err) and "\n" not in str(err)

    load_damaged()


def test_a_model_folder_with_a_damaged_checkpoint_is_refused_when_served(bad, trained, tmp_path):
    """The served model reads its checkpoint artifact through the same loader: mlflow's own loader ends in the
    one-line refusal too, and a model folder whose MLmodel names no checkpoint is named as not ours."""
    from frontalab.training.sources import checkpoint_file

    folder = tmp_path / "model"
    (folder / "artifacts").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n")
    with pytest.raises(UnreadableModel, match="names no checkpoint artifact"):
        checkpoint_file(str(folder), tmp_path)
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts:\n      checkpoint:\n"
                                    "        path: artifacts/checkpoint.pt\n")
    shutil.copy(bad["truncated"][0], folder / "artifacts" / "checkpoint.pt")
    with pytest.raises(UnreadableModel, match="cut short or corrupt"):
        load_checkpoint(checkpoint_file(str(folder), tmp_path))
