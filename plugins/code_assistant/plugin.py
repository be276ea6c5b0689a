"""Code assistant: explain code, write unit tests for it, or review it, with one prompt template per task."""

from __future__ import annotations

from moltbot.plugins import BasePlugin

SYSTEM_PROMPT = "You are a careful senior software engineer. Be precise and concise."

TEMPLATES = {
    "explain": (
        "Explain what the following {language} code does, step by step, for a developer who has not seen it. "
        "Mention inputs, outputs, side effects and anything surprising.{focus}\n\n```{fence}\n{code}\n```"
    ),
    "tests": (
        "Write unit tests for the following {language} code using {framework}. Cover the normal cases, edge cases "
        "and error handling; each test checks one behaviour and has a descriptive name. Reply with the test code "
        "only, in one fenced block.{focus}\n\n```{fence}\n{code}\n```"
    ),
    "review": (
        "Review the following {language} code as in a pull request. List bugs first, then security problems, "
        "then readability and performance, each with the line it concerns and a concrete fix.{focus}"
        "\n\n```{fence}\n{code}\n```"
    ),
}

TEST_FRAMEWORKS = {"python": "pytest", "javascript": "Jest", "typescript": "Jest", "go": "the testing package",
                   "rust": "#[test] functions", "java": "JUnit 5", "c#": "xUnit", "ruby": "RSpec", "php": "PHPUnit"}

# Cheap hints, used only when the caller does not say which language the code is in.
LANGUAGE_HINTS = [
    ("rust", ("fn main(", "let mut ", "impl ", "pub fn ")),
    ("go", ("package main", "func ", ":= ")),
    ("python", ("def ", "import ", "self.", "elif ")),
    ("typescript", ("interface ", ": string", ": number")),
    ("javascript", ("function ", "const ", "=> ", "console.log")),
    ("java", ("public class ", "System.out", "private static ")),
    ("sql", ("SELECT ", "select ", "FROM ")),
    ("shell", ("#!/bin/bash", "#!/bin/sh", "echo ")),
]


def guess_language(code: str) -> str:
    scores = {language: sum(hint in code for hint in hints) for language, hints in LANGUAGE_HINTS}
    best = max(scores, key=scores.get)
    return best if scores[best] else "unknown"


class CodeAssistantPlugin(BasePlugin):
    def __init__(self, config):
        super().__init__(config)
        self.chat_model = config.get("chat_model") or None
        self.max_tokens = int(config.get("max_tokens", 512))
        self.temperature = float(config.get("temperature", 0.2))

    def build_messages(self, task: str, code: str, language: str | None, framework: str | None,
                       focus: str | None) -> tuple[list[dict], str]:
        language = (language or guess_language(code)).lower()
        framework = framework or TEST_FRAMEWORKS.get(language, "the usual unit test framework for the language")
        prompt = TEMPLATES[task].format(
            language=language if language != "unknown" else "source", framework=framework,
            focus=f" Pay special attention to: {focus}." if focus else "",
            fence="" if language == "unknown" else language, code=code.rstrip(),
        )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}], language

    async def execute(self, context):
        request = context.input
        messages, language = self.build_messages(request["task"], request["code"], request.get("language"),
                                                 request.get("framework"), request.get("focus"))
        max_tokens = min(request.get("max_tokens", self.max_tokens), self.max_tokens)
        reply = await context.models.achat(messages, model=self.chat_model, max_tokens=max_tokens,
                                           temperature=self.temperature)
        return {"task": request["task"], "language": language, "text": reply.get("content", ""),
                "finish_reason": reply.get("finish_reason"), "model": reply.get("model"), "usage": reply.get("usage")}
