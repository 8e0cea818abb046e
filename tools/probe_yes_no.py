"""Can the frozen LM answer the yes/no questions at all, if the scene is given to it as plain text?

No adapter, no pseudo-tokens: the scene is written into the prompt in words ("Scene: the person is
sitting."), every yes/no wording of questions.py is asked for every activity label, and the LM's
first-token preference between "Yes" and "No" is scored against the truth (questions.PREDICATES).
A second format lets the LM state the activity first ("The person is sitting, so") and scores the
next token. If the LM fails here, no adapter can make it answer from pseudo-tokens (docs/ANSWERS.md).

    .venv/bin/python tools/probe_yes_no.py
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from frozen_vlm_perception.config import DEFAULT_ACTIVITY_LABELS, LanguageConfig
from frozen_vlm_perception.nn.language import ensure_smollm2_cache
from frozen_vlm_perception.questions import PREDICATES, YES_NO_PREDICATE


def main() -> None:
    folder = ensure_smollm2_cache()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    system = LanguageConfig().system_prompt
    scenes = {
        "activity in words": lambda label: f"the person is {label}.",
        "every predicate spelled out": lambda label: f"the person is {label}. "
        + "; ".join(f"{name}: {'yes' if test(label) else 'no'}" for name, test in PREDICATES.items()),
    }
    answers = {"answer first": lambda label: "", "activity first": lambda label: f"The person is {label}, so"}
    for scene_name, scene in scenes.items():
        for answer_name, start in answers.items():
            yes = [tokenizer.encode(w)[0] for w in (("Yes", "yes") if not start("x") else (" yes", " Yes"))]
            no = [tokenizer.encode(w)[0] for w in (("No", "no") if not start("x") else (" no", " No"))]
            right = said_yes = total = 0
            for question, predicate in YES_NO_PREDICATE.items():
                for label in DEFAULT_ACTIVITY_LABELS:
                    messages = [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"Scene: {scene(label)}\n{question}"},
                    ]
                    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                    ids = tokenizer(text + start(label), return_tensors="pt").input_ids
                    with torch.no_grad():
                        logits = model(ids).logits[0, -1]
                    says_yes = bool(logits[yes].max() > logits[no].max())
                    right += says_yes == PREDICATES[predicate](label)
                    said_yes += says_yes
                    total += 1
            always_no = sum(
                not PREDICATES[p](lab) for p in YES_NO_PREDICATE.values() for lab in DEFAULT_ACTIVITY_LABELS
            )
            print(
                f"{scene_name:28s} {answer_name:15s} correct {right}/{total} = {right / total:.2f}  "
                f"(said yes {said_yes}/{total}; always 'no' would score {always_no / total:.2f})"
            )


if __name__ == "__main__":
    main()
