"""The LLM judge and embedding similarity against the bundled offline models, through the
server's scorer route. The tiny judge's grades are not meaningful; what is checked is that an
answer comes back and is read as a number in range."""

from __future__ import annotations

from pathlib import Path

from keel.config import Settings
from tests.conftest import running_app


async def test_the_bundled_models_judge_and_embed(tmp_path: Path) -> None:
    settings = Settings.model_validate({"home": str(tmp_path / "home")})
    async with running_app(settings) as (_, client):
        judge = {
            "type": "llm_judge",
            "model": "smollm2-135m-instruct",
            "rubric": "Is the answer the capital of the country asked about?",
        }
        cases = [{"output": "Paris", "expected": "Paris", "inputs": {"country": "France"}}]
        response = await client.post(
            "/v1/keel/scorers/score", json={"scorer": judge, "cases": cases}
        )
        assert response.status_code == 200, response.text
        score = response.json()["scores"][0]
        assert 0.0 <= score["value"] <= 1.0
        assert score["detail"]
        similar = await client.post(
            "/v1/keel/scorers/score",
            json={
                "scorer": {"type": "embedding_similarity"},
                "cases": [
                    {
                        "output": "The cat sat on the mat.",
                        "expected": "A cat was sitting on a mat.",
                    },
                    {
                        "output": "The cat sat on the mat.",
                        "expected": "Quarterly tax filing rules.",
                    },
                ],
            },
        )
        assert similar.status_code == 200, similar.text
        close, far = (s["value"] for s in similar.json()["scores"])
        assert -1.0 <= far < close <= 1.0
