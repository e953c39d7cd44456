"""Generate the shipped sample dataset: sentences about a person → JSON {name, age, city}.

All text is made up here from small word lists (no third-party text). Deterministic: the same seed
gives the same files, so the committed files can be checked against this script.

    python scripts/make_sample_data.py            # writes nbfinetune/samples/people_{train,eval}.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

NAMES = ["Kenji", "Amara", "Lucia", "Tomasz", "Priya", "Mateo", "Ingrid", "Kwame", "Sofia", "Arjun", "Elena",
         "Farid", "Mei", "Oskar", "Nadia", "Diego", "Hana", "Liam", "Zara", "Emeka", "Yuki", "Rosa", "Anders",
         "Leila", "Marco", "Aiko", "Tariq", "Chloe", "Bruno", "Ananya", "Pavel", "Greta", "Omar", "Ines",
         "Sione", "Freya", "Ravi", "Camila", "Jonas", "Ayesha"]
CITIES = ["Osaka", "Lagos", "Lisbon", "Krakow", "Pune", "Bogota", "Bergen", "Accra", "Seville", "Chennai",
          "Porto", "Tabriz", "Chengdu", "Malmo", "Casablanca", "Cusco", "Sapporo", "Dublin", "Nairobi", "Enugu",
          "Kyoto", "Valencia", "Aarhus", "Beirut", "Turin", "Nagoya", "Muscat", "Lyon", "Recife", "Jaipur",
         "Brno", "Graz", "Izmir", "Quito", "Apia", "Tromso", "Goa", "Cali", "Leipzig", "Lahore"]
TEMPLATES = [
    "Meet {name} from {city}; {name} is {age} years old.",
    "{name}, aged {age}, lives in {city}.",
    "Our new colleague {name} ({age}) just moved here from {city}.",
    "In {city} I met {name}, who told me they are {age}.",
    "{name} is a {age}-year-old engineer based in {city}.",
    "Born and raised in {city}, {name} turned {age} last week.",
    "Contact: {name}, {city}. Age: {age}.",
    "The winner, {age}-year-old {name} of {city}, thanked the crowd.",
    "{city} resident {name} celebrated turning {age} with friends.",
    "Passenger {name} (age {age}) boarded the train to {city}, where they live.",
    "At {age}, {name} opened a small bakery in {city}.",
    "Please welcome {name}! {name} is {age} and comes from {city}.",
]
INSTRUCTION = ("Extract the person's name, age and city from the sentence. Answer with JSON only, "
               "using the keys name, age and city.\n\nSentence: {sentence}")


def make_rows(count: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(count):
        person = {"name": rng.choice(NAMES), "age": rng.randint(19, 88), "city": rng.choice(CITIES)}
        sentence = rng.choice(TEMPLATES).format(**person)
        rows.append({"messages": [
            {"role": "user", "content": INSTRUCTION.format(sentence=sentence)},
            {"role": "assistant", "content": json.dumps(person)},
        ]})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main(out_dir: str = "nbfinetune/samples", seed: int = 7) -> None:
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "people_train.jsonl", make_rows(480, rng))
    write(out / "people_eval.jsonl", make_rows(24, rng))
    print(f"wrote {out}/people_train.jsonl (480 rows) and people_eval.jsonl (24 rows)")


if __name__ == "__main__":
    main(*sys.argv[1:2])
