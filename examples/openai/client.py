#!/usr/bin/env python3
"""The OpenAI example's client: the official ``openai`` package against naiad.

    naiad --model-repository=examples/openai/models --allow-openai=true
    python examples/openai/client.py [--base-url http://localhost:9000/v1]
"""

from __future__ import annotations

import argparse

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://localhost:9000/v1")
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="not-needed")

    print("models:", [m.id for m in client.models.list()])

    reply = client.chat.completions.create(
        model="tiny_lm",
        messages=[{"role": "user", "content": "What light through yonder window breaks?"}],
        max_tokens=48, temperature=0.8, seed=1)
    print("chat:", repr(reply.choices[0].message.content), reply.usage)

    print("stream: ", end="", flush=True)
    for chunk in client.chat.completions.create(
            model="tiny_lm", messages=[{"role": "user", "content": "Speak, speak."}],
            max_tokens=48, temperature=0.8, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    emb = client.embeddings.create(model="minilm",
                                   input=["A man is eating food.", "Someone has a meal."])
    a, b = (d.embedding for d in emb.data)
    print("embeddings:", len(a), "dimensions; cosine similarity",
          round(sum(x * y for x, y in zip(a, b)), 4))


if __name__ == "__main__":
    main()
