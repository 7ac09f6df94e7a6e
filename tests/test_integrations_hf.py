"""otofx.integrations.hf.OtofxTrainer: a tiny BERT compressed by transformers.Trainer itself (a few
steps, CPU, offline), otofx's sparsity and FLOPs in the Trainer's logs, the subnet saved and equal
to the trained model; settings it cannot honour raise ConfigError."""

from __future__ import annotations

import os

import pytest
import torch

import otofx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from otofx.passes.export import AttentionDropout  # noqa: E402

from otofx.integrations.hf import OtofxTrainer  # noqa: E402

VOCAB, SEQ, BATCH = 64, 8, 4


class Parity(torch.utils.data.Dataset):
    """Token sequences labelled by whether token 7 occurs in them."""

    def __init__(self, n: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=gen)
        self.labels = (self.ids == 7).any(1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": self.labels[i]}


def tiny_bert_job(steps: int, attention: str = "eager", train_mode: bool = True) -> otofx.CompressionJob:
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2,
                                  attn_implementation=attention)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).train(train_mode)
    batch = torch.utils.data.default_collate([Parity(BATCH, seed=9)[i] for i in range(BATCH)])
    config = otofx.HESSOConfig(lr=1e-3, variant="adamw", target_group_sparsity=0.5, start_pruning_step=2,
                               pruning_steps=steps // 2, pruning_periods=2)
    return otofx.compress(model, config, batch)


def arguments(tmp_path, **overrides) -> transformers.TrainingArguments:
    settings = dict(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=BATCH,
                    per_device_eval_batch_size=BATCH, dataloader_drop_last=True, logging_steps=2,
                    save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                    learning_rate=1e-3)
    return transformers.TrainingArguments(**{**settings, **overrides})


def test_trainer_compresses_logs_sparsity_and_flops_and_saves_the_subnet(tmp_path):
    job = tiny_bert_job(steps=10)
    trainer = OtofxTrainer(job, arguments(tmp_path), train_dataset=Parity(64), eval_dataset=Parity(8, 1))
    assert trainer.optimizer is job.optimizer and trainer.model is job.module
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "otofx_group_sparsity" in entry]
    assert len(logs) >= 5 and any("loss" in entry for entry in logs)        # on the Trainer's own lines
    assert logs[0]["otofx_zero_channels"] < logs[-1]["otofx_zero_channels"]
    assert logs[-1]["otofx_zero_channels"] == logs[-1]["otofx_target_channels"] > 0
    end = trainer.state.log_history[-1]
    assert 0 < end["otofx_params_ratio"] < 1 and 0 < end["otofx_flops_ratio"] < 1
    assert end["otofx_params"] == sum(p.numel() for p in trainer.subnet.parameters())

    batch = torch.utils.data.default_collate([Parity(BATCH, seed=3)[i] for i in range(BATCH)])
    with torch.no_grad():
        want = job.module.eval()(**batch)["logits"]
        assert torch.allclose(trainer.subnet(**batch)["logits"], want, atol=1e-5)
        loaded = otofx.load(tmp_path / "otofx_subnet.pt2")
        assert torch.allclose(loaded(**batch)["logits"], want, atol=1e-5)
    assert "eval_loss" in trainer.evaluate()


def test_trainer_refuses_another_optimizer_and_batches_the_graph_cannot_take(tmp_path):
    job = tiny_bert_job(steps=10)
    adamw = torch.optim.AdamW(job.module.parameters())
    with pytest.raises(otofx.ConfigError, match="another optimizer than otofx's"):
        OtofxTrainer(job, arguments(tmp_path), optimizers=(adamw, None))
    with pytest.raises(otofx.ConfigError, match="optimizer_cls_and_kwargs"):
        OtofxTrainer(job, arguments(tmp_path), optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}))
    with pytest.raises(otofx.ConfigError, match="dataloader_drop_last=True"):
        OtofxTrainer(job, arguments(tmp_path, dataloader_drop_last=False))
    with pytest.raises(otofx.ConfigError, match="per_device_train_batch_size = 8.*set it to 4"):
        OtofxTrainer(job, arguments(tmp_path, per_device_train_batch_size=8))
    with pytest.raises(otofx.ConfigError, match="not job.module"):
        OtofxTrainer(job, arguments(tmp_path), model=torch.nn.Linear(2, 2))


def test_trainer_takes_sdpa_attention_traced_in_training_mode_and_its_dropout_stops_in_eval(tmp_path):
    job = tiny_bert_job(steps=10, attention="sdpa")
    assert any(isinstance(m, AttentionDropout) for m in job.module.modules())
    trainer = OtofxTrainer(job, arguments(tmp_path, max_steps=2), train_dataset=Parity(16))
    trainer.train()
    batch = torch.utils.data.default_collate([Parity(BATCH, seed=3)[i] for i in range(BATCH)])
    with torch.no_grad():
        first = job.module.eval()(**batch)["logits"]
        assert torch.equal(first, job.module(**batch)["logits"])          # eval is deterministic
