"""Generate the labelled runs that ``eval_reports.py`` scores the three reports on.

Runs SmolLM2-135M-Instruct (SDPA, float32, greedy) on three sets of prompts and stores one JSON
line per run under ``tests/data/eval/`` (token ids and text, no attention), with the label the
rules of ``eval_labels.py`` derive from the output and the evidence they used:

- ``context.jsonl``: a note states a counterfactual value ("Note: The Eiffel Tower is in
  Rome.") and the question asks for it, in three prompt styles over 50 facts × 2 values;
  labelled used / ignored / other.
- ``repetition.jsonl``: open-ended prompts (plain continuations and chat requests), 64 new
  tokens; labelled repeating / not / other by repeated 4-grams.
- ``hallucination.jsonl``: questions about real and invented people, places and products;
  labelled real / invented by construction, hedging recorded.

``metadata.json`` records the model, dtype, attention implementation, generation settings,
the rules and the counts per label. Deterministic (greedy, fixed order) and resumable: runs
already stored are kept; ``--only`` limits the tasks. Run with ``nice -n 10`` on a shared
machine: ``nice -n 10 .venv/bin/python benchmarks/make_eval_data.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_labels as labels  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "eval"
GENERATION = {"context": {"plain": 12, "chat": 24}, "repetition": {"plain": 64, "chat": 64},
              "hallucination": {"plain": 40, "chat": 40}}

# (statement prefix, question, real spellings, two counterfactual values)
FACTS = [
    ("The Eiffel Tower is in", "Where is the Eiffel Tower?", ["Paris"], ["Rome", "Berlin"]),
    ("The Colosseum is in", "Where is the Colosseum?", ["Rome"], ["Madrid", "Vienna"]),
    ("Big Ben is in", "Where is Big Ben?", ["London"], ["Dublin", "Lisbon"]),
    ("The Statue of Liberty is in", "Where is the Statue of Liberty?", ["New York"], ["Chicago", "Boston"]),
    ("The Louvre is in", "Where is the Louvre?", ["Paris"], ["Madrid", "London"]),
    ("The Kremlin is in", "Where is the Kremlin?", ["Moscow"], ["Prague", "Berlin"]),
    ("The Acropolis is in", "Where is the Acropolis?", ["Athens"], ["Cairo", "Rome"]),
    ("The Golden Gate Bridge is in", "Where is the Golden Gate Bridge?", ["San Francisco"],
     ["Seattle", "Miami"]),
    ("Hollywood is in", "Where is Hollywood?", ["Los Angeles", "California"], ["Chicago", "Houston"]),
    ("The Leaning Tower is in", "Where is the Leaning Tower?", ["Pisa"], ["Venice", "Florence"]),
    ("The Great Wall is in", "Where is the Great Wall?", ["China"], ["Mexico", "Egypt"]),
    ("The pyramids of Giza are in", "Where are the pyramids of Giza?", ["Egypt"], ["Peru", "India"]),
    ("The Taj Mahal is in", "Where is the Taj Mahal?", ["India"], ["Turkey", "Spain"]),
    ("Mount Fuji is in", "Where is Mount Fuji?", ["Japan"], ["Chile", "Norway"]),
    ("The Amazon rainforest is in", "Where is the Amazon rainforest?", ["Brazil", "South America"],
     ["Kenya", "Indonesia"]),
    ("The capital of France is", "What is the capital of France?", ["Paris"], ["Lyon", "Brussels"]),
    ("The capital of Japan is", "What is the capital of Japan?", ["Tokyo"], ["Osaka", "Seoul"]),
    ("The capital of Italy is", "What is the capital of Italy?", ["Rome"], ["Milan", "Naples"]),
    ("The capital of Germany is", "What is the capital of Germany?", ["Berlin"], ["Munich", "Hamburg"]),
    ("The capital of Spain is", "What is the capital of Spain?", ["Madrid"], ["Barcelona", "Seville"]),
    ("The capital of England is", "What is the capital of England?", ["London"], ["Manchester", "Oxford"]),
    ("The capital of Russia is", "What is the capital of Russia?", ["Moscow"], ["Minsk", "Warsaw"]),
    ("The capital of China is", "What is the capital of China?", ["Beijing"], ["Shanghai", "Hanoi"]),
    ("The capital of Egypt is", "What is the capital of Egypt?", ["Cairo"], ["Tunis", "Athens"]),
    ("The capital of Canada is", "What is the capital of Canada?", ["Ottawa"], ["Toronto", "Vancouver"]),
    ("The capital of Australia is", "What is the capital of Australia?", ["Canberra"], ["Perth", "Auckland"]),
    ("The capital of the United States is", "What is the capital of the United States?", ["Washington"],
     ["Boston", "Denver"]),
    ("The capital of Greece is", "What is the capital of Greece?", ["Athens"], ["Sparta", "Corinth"]),
    ("The capital of Portugal is", "What is the capital of Portugal?", ["Lisbon"], ["Porto", "Madrid"]),
    ("The Mona Lisa was painted by", "Who painted the Mona Lisa?", ["Leonardo", "da Vinci"],
     ["Picasso", "Rembrandt"]),
    ("The theory of relativity was developed by", "Who developed the theory of relativity?", ["Einstein"],
     ["Newton", "Darwin"]),
    ("Romeo and Juliet was written by", "Who wrote Romeo and Juliet?", ["Shakespeare"],
     ["Dickens", "Tolstoy"]),
    ("The telephone was invented by", "Who invented the telephone?", ["Bell"], ["Edison", "Tesla"]),
    ("The first man on the Moon was", "Who was the first man on the Moon?", ["Armstrong"],
     ["Gagarin", "Glenn"]),
    ("The Harry Potter books were written by", "Who wrote the Harry Potter books?", ["Rowling"],
     ["Tolkien", "Austen"]),
    ("Microsoft was founded by", "Who founded Microsoft?", ["Gates"], ["Musk", "Bezos"]),
    ("Water is made of hydrogen and", "Water is made of hydrogen and what?", ["oxygen"],
     ["nitrogen", "helium"]),
    ("The largest planet in the solar system is", "What is the largest planet in the solar system?",
     ["Jupiter"], ["Saturn", "Neptune"]),
    ("The planet known as the Red Planet is", "Which planet is known as the Red Planet?", ["Mars"],
     ["Venus", "Mercury"]),
    ("The color of the sky on a clear day is", "What is the color of the sky on a clear day?", ["blue"],
     ["green", "orange"]),
    ("The chemical symbol for gold is", "What is the chemical symbol for gold?", ["Au"], ["Ag", "Gd"]),
    ("The official language of Brazil is", "What is the official language of Brazil?", ["Portuguese"],
     ["Spanish", "French"]),
    ("The official language of Mexico is", "What is the official language of Mexico?", ["Spanish"],
     ["Portuguese", "Italian"]),
    ("The currency of Japan is the", "What is the currency of Japan?", ["yen"], ["won", "peso"]),
    ("The currency of the United Kingdom is the", "What is the currency of the United Kingdom?",
     ["pound", "sterling"], ["euro", "franc"]),
    ("The longest river in Africa is the", "What is the longest river in Africa?", ["Nile"],
     ["Congo", "Niger"]),
    ("The tallest mountain in the world is", "What is the tallest mountain in the world?", ["Everest"],
     ["Kilimanjaro", "Denali"]),
    ("The largest ocean on Earth is the", "What is the largest ocean on Earth?", ["Pacific"],
     ["Atlantic", "Arctic"]),
    ("The Beatles came from", "Where did the Beatles come from?", ["Liverpool"], ["Glasgow", "Bristol"]),
    ("The number of days in a week is", "How many days are in a week?", ["seven", "7"], ["nine", "9"]),
]
CONTEXT_STYLES = {
    # the wording, as a plain continuation
    "plain-note": (False, "Read the note and answer from it. Note: {prefix} {value}. Question: {prefix}"),
    # the same instruction as a chat question
    "chat-note": (True, "Read the note and answer from it.\nNote: {prefix} {value}.\nQuestion: {question}"),
    # a Q&A layout with the note as a bare line before it
    "plain-qa": (False, "Note: {prefix} {value}.\nQ: {question}\nA:"),
}

REPETITION_PLAIN = [
    "Once upon a time, there was a little", "The history of the city of", "My favourite food is",
    "Here is a list of fruits:", "The best way to learn programming is", "In the year 2050,",
    "The most important thing in life is", "Dear diary, today I", "The rules of the game are simple:",
    "I like to eat apples and", "The weather today is", "Step 1: Open the box. Step 2:",
    "The cat sat on the mat and", "Monday, Tuesday, Wednesday,", "Thank you for your",
    "The following is a poem about the sea:", "Chapter 1. The boy walked into the", "Our company values are",
    "Ingredients: flour, sugar,", "The key to success is", "He said that he would", "Welcome to our website.",
    "The meeting will start at", "I think that the", "This product is great because", "One, two, three,",
    "The dog ran to the park and", "In conclusion, the results show that", "She opened the door and saw",
    "Frequently asked questions: Q:", "The train left the station at", "Why is the sky blue? Because",
    "A good teacher is someone who", "The robot looked at the", "First, preheat the oven. Then",
    "My name is John and I", "The sun rises in the east and", "Rules: 1. Be kind. 2.",
    "The city was quiet at night.", "Breaking news: scientists have",
]
REPETITION_CHAT = [
    "Write a short story about a dragon who learns to cook.", "Describe your ideal vacation.",
    "Explain how a bicycle works.", "Write a poem about autumn leaves.",
    "Give me tips for studying for exams.",
    "What are the benefits of drinking water?", "Tell me about the history of the internet.",
    "Write a letter to a friend about your weekend.", "Describe a busy market in the morning.",
    "Explain photosynthesis to a child.", "Write a product description for a new coffee mug.",
    "What should I pack for a camping trip?", "Describe the life cycle of a butterfly.",
    "Write a short speech for a school graduation.", "How do I make a paper airplane?",
    "Explain why exercise is important.", "Write a story about a robot who wants to be a painter.",
    "Describe the city of the future.", "What makes a good friend?", "Explain how rain forms.",
    "Write a recipe for a simple salad.", "Tell me a bedtime story about the moon.",
    "Describe a day in the life of a farmer.", "Give me ideas for a birthday party.",
    "Explain what a computer program is.", "Write a review of your favourite book.",
    "Describe the ocean to someone who has never seen it.", "How can I save money each month?",
    "Write a song about the rain.", "Explain how plants grow from seeds.",
    # added after the first 70 runs gave 26 "not" runs: chat requests loop less than continuations
    "Describe how to brush your teeth properly.", "Write a short story about a lost kitten.",
    "Explain how a refrigerator keeps food cold.", "What are some fun things to do in winter?",
    "Write a thank-you note to a teacher.", "Describe a thunderstorm.", "How does a library work?",
    "Explain the water cycle.", "Write a short story about a pirate who is afraid of water.",
    "Give me advice for a job interview.", "Describe your favourite season and why.",
    "Explain how bees make honey.", "Write a diary entry from an astronaut on the Moon.",
    "What are the main parts of a tree?", "Describe how to plant a garden.",
    "Write a short fable with a moral.", "Explain how a train works.", "Tell me about the planets.",
    "Write an invitation to a picnic.", "Describe a walk through a forest.",
]

REAL_ENTITIES = {
    "person": ["Albert Einstein", "Marie Curie", "Isaac Newton", "Leonardo da Vinci", "William Shakespeare",
               "Napoleon Bonaparte", "Charles Darwin", "Mahatma Gandhi", "Abraham Lincoln",
               "Wolfgang Amadeus Mozart", "Pablo Picasso", "Nelson Mandela", "Cleopatra", "Galileo Galilei",
               "Ludwig van Beethoven"],
    "place": ["Mount Everest", "the Amazon River", "Tokyo", "the Sahara Desert", "Lake Victoria",
              "the Grand Canyon", "Venice", "Sydney", "Cairo", "Iceland", "the Alps", "Kyoto", "Machu Picchu",
              "Istanbul", "the Dead Sea"],
    "product": ["the iPhone", "Microsoft Windows", "Coca-Cola", "the Toyota Corolla", "Google Maps",
                "the PlayStation", "Lego", "Nike", "Wikipedia", "the Python programming language", "Netflix",
                "the Amazon Kindle", "the Tesla Model S", "Spotify", "Minecraft"],
}
INVENTED_ENTITIES = {
    "person": ["Velina Ostrakova", "Theodric Malvane", "Oren Castellwyn", "Marisol Vantreck",
               "Halvard Penwick", "Ismelda Carrowe", "Bertrand Quillfeather", "Anouk Teverell",
               "Casimir Dellavoy", "Rosalind Ferrowby", "Emeric Solvang", "Tamsin Oakhurst", "Lucian Varrow",
               "Petra Zelenkaya", "Dorian Vaskell"],
    "place": ["Lake Vornhelm", "Mount Sarrowind", "Drevenport", "the Kessarine Desert", "Port Ellisandre",
              "the Tavorian Islands", "Bruxholm Valley", "the river Quellan", "Mirenza Bay", "Oskarveld",
              "Calvenna", "the Drosmere Highlands", "Glimmerstead", "Fenwick Fjord", "Thalassa Point"],
    "product": ["the Zentrix Q7 smartphone", "Lumora soda", "the Veltrane X200 laptop", "Quorvia Cloud",
                "the Brenix electric scooter", "Solvexa shampoo", "the Aurelle smartwatch",
                "the Kintaro Vesta car", "the Pallix search engine", "Norvana headphones",
                "the Trivell 3D printer", "Mervox antivirus",
                "Glintwave streaming", "the Hollowpine game console", "Cyravel running shoes"],
}
HALLUCINATION_QUESTIONS = {"person": ["Who is {e}?", "Tell me about {e}."],
                           "place": ["Where is {e}?", "Tell me about {e}."],
                           "product": ["What is {e}?", "Tell me about {e}."]}


def plan() -> list[dict]:
    """Every run to generate, in a fixed order, with its id, task, prompt and what labels it."""
    runs = []
    for style, (chat, template) in CONTEXT_STYLES.items():
        for f_i, (prefix, question, real, values) in enumerate(FACTS):
            for v_i, value in enumerate(values):
                prompt = template.format(prefix=prefix, value=value, question=question)
                runs.append({"id": f"context-{style}-{f_i:02d}-{v_i}", "task": "context", "style": style,
                             "chat": chat, "prompt": prompt, "counterfactual": [value], "real": real})
    for i, p in enumerate(REPETITION_PLAIN):
        runs.append({"id": f"repetition-plain-{i:02d}", "task": "repetition", "style": "plain", "chat": False,
                     "prompt": p})
    for i, p in enumerate(REPETITION_CHAT):
        runs.append({"id": f"repetition-chat-{i:02d}", "task": "repetition", "style": "chat", "chat": True,
                     "prompt": p})
    for status, entities in (("real", REAL_ENTITIES), ("invented", INVENTED_ENTITIES)):
        for kind, names in entities.items():
            for e_i, name in enumerate(names):
                for q_i, q in enumerate(HALLUCINATION_QUESTIONS[kind]):
                    text = q.format(e=name)
                    runs.append({"id": f"hallucination-{status}-{kind}-{e_i:02d}-{q_i}",
                                 "task": "hallucination", "style": f"chat-{kind}", "chat": True,
                                 "prompt": text[0].upper() + text[1:], "entity": name, "kind": kind,
                                 "status": status})
    return runs


def check_prompt(run: dict, text: str) -> None:
    """A context prompt must name the counterfactual value once and the real one nowhere, so the
    output's mention of either comes from the note or from the model's own knowledge."""
    if run["task"] != "context":
        return
    value = run["counterfactual"][0]
    if len(re.findall(rf"(?<!\w){re.escape(value)}(?!\w)", text, flags=re.IGNORECASE)) != 1:
        raise SystemExit(f"{run['id']}: the prompt must name {run['counterfactual']} exactly once: {text!r}")
    if labels.first_mention(text, run["real"]) >= 0:
        raise SystemExit(f"{run['id']}: the prompt names the real value {run['real']}: {text!r}")


def generate(model, tokenizer, run: dict) -> dict:
    import torch

    if run["chat"]:
        messages = [{"role": "user", "content": run["prompt"]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=True, return_tensors="pt")["input_ids"]
    else:
        ids = tokenizer(run["prompt"], return_tensors="pt")["input_ids"]
    check_prompt(run, tokenizer.decode(ids[0]))
    new = GENERATION[run["task"]]["chat" if run["chat"] else "plain"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    gen = out[0, ids.shape[1]:].tolist()
    record = dict(run, prompt_ids=ids[0].tolist(), generated_ids=gen,
                  generated_text=tokenizer.decode(gen, skip_special_tokens=True))
    label, evidence = labels.label_run(record, tokenizer.all_special_ids)
    record["label"] = label
    record["derived_from"] = evidence
    return record


def read_runs(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="context,repetition,hallucination",
                    help="comma-separated tasks to generate (default: all three)")
    ap.add_argument("--out", default=str(OUT), help="folder for the JSON lines and metadata.json")
    args = ap.parse_args()
    tasks = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(labels.LABELS))
    if unknown:
        raise SystemExit(f"--only names unknown tasks {unknown}; choose from {sorted(labels.LABELS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    import attn_widget as aw

    model, tokenizer = aw.load_model("smollm2", attn_implementation="sdpa")
    all_runs = plan()
    meta_path = out / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    for task in tasks:
        path = out / f"{task}.jsonl"
        done = read_runs(path)
        todo = [r for r in all_runs if r["task"] == task and r["id"] not in done]
        t0 = time.perf_counter()
        with path.open("a") as f:
            for i, run in enumerate(todo):
                rec = generate(model, tokenizer, run)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                done[rec["id"]] = rec
                if (i + 1) % 25 == 0:
                    print(f"{task}: {i + 1}/{len(todo)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        order = [r["id"] for r in all_runs if r["task"] == task]
        path.write_text("".join(json.dumps(done[i], ensure_ascii=False) + "\n" for i in order))
        counts = {k: sum(done[i]["label"] == k for i in order) for k in labels.LABELS[task]}
        print(f"{task}: {len(order)} runs ({len(todo)} generated now in {time.perf_counter() - t0:.0f} s), "
              f"{counts}", flush=True)
    counts = {}
    for task in labels.LABELS:
        runs = read_runs(out / f"{task}.jsonl").values()
        counts[task] = {k: sum(r["label"] == k for r in runs) for k in labels.LABELS[task]} if runs else {}
    meta.update({
        "model": "smollm2 (SmolLM2-135M-Instruct, bundled)", "model_class": type(model).__name__,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "attn_implementation": model.config._attn_implementation,
        "generation": {"decoding": "greedy (do_sample=False)", "max_new_tokens": GENERATION,
                       "chat": "tokenizer.apply_chat_template(add_generation_prompt=True) where chat is true",
                       "stops": "at the tokenizer's end-of-text token"},
        "special_ids": list(tokenizer.all_special_ids),
        "rules": labels.__doc__.split("Rules\n-----\n")[1].strip(),
        "labels": labels.LABELS, "failing_normal": labels.FAILING_NORMAL, "counts": counts,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    })
    meta_path.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
