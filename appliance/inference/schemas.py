"""The inference API's wire format: request and response bodies (pydantic models, so the OpenAPI
page documents them) and the error mapping: every error is `{"error": message}`, and pydantic's
validation errors become one readable message each (400 for bad JSON, 422 for the rest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from appliance.inference.predictor import TOPK_MAX

GAME_ID_MAX = 128

# -- request and response bodies ---------------------------------------------------------------


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    moves: list[str] = Field(default_factory=list, description="UCI moves played so far.")
    fen: str | None = Field(None, description="Starting position (default: the standard one).")
    topk: int | None = Field(None, ge=1, le=TOPK_MAX, description="How many ranked moves to "
                             "return; default INFERENCE_TOPK_DEFAULT (5).")
    game_id: str | None = Field(None, description="Names the game (1 to 128 characters): the "
                                "service keeps the network's state after these moves, so the "
                                "next request of the game runs only its new moves.")

    @field_validator("moves", mode="before")
    @classmethod
    def _moves(cls, v: Any) -> Any:
        if not isinstance(v, list) or not all(isinstance(m, str) for m in v):
            raise ValueError("must be a list of UCI move strings")
        return v

    @field_validator("fen", mode="before")
    @classmethod
    def _fen(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError("must be a FEN string or null")
        return v

    @field_validator("topk", mode="before")
    @classmethod
    def _topk(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= TOPK_MAX:
            raise ValueError(f"must be an integer from 1 to {TOPK_MAX}")
        return v


    @field_validator("game_id", mode="before")
    @classmethod
    def _game_id(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, str) or not 1 <= len(v) <= GAME_ID_MAX):
            raise ValueError(f"must be a string of 1 to {GAME_ID_MAX} characters or null")
        return v


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    positions: list[InferRequest] = Field(min_length=1, description="Positions to predict.")

    @field_validator("positions", mode="before")
    @classmethod
    def _positions(cls, v: Any) -> Any:
        if not isinstance(v, list) or not v:
            raise ValueError("must be a non-empty list of positions")
        return v


class RankedMove(BaseModel):
    uci: str
    prob: float
    legal: bool


class InferResult(BaseModel):
    topk: list[RankedMove]
    predicted_uci: str = Field(description="The model's top move, legal or not.")
    best_legal: str = Field(description="The highest-ranked legal move.")
    phase: str
    side_to_move: str


class InferResponse(InferResult):
    device: str
    latency_ms: float


class BatchResponse(BaseModel):
    results: list[InferResult]
    device: str
    latency_ms: float


class ErrorBody(BaseModel):
    error: str


# -- errors ------------------------------------------------------------------------------------


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "body":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_message(errors: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """(status, messages) for pydantic errors: 400 for bad JSON, 422 for the rest."""
    messages = []
    status = 422
    for err in errors:
        kind, loc = err.get("type", ""), tuple(err.get("loc", ()))
        where = _path(loc)
        if kind == "json_invalid":
            status = 400
            messages.append(f"malformed JSON body: {err.get('ctx', {}).get('error', 'invalid')}")
        elif not where and kind in ("missing", "model_attributes_type", "dict_type"):
            messages.append("request body must be a JSON object")
        elif kind == "missing":
            messages.append(f"{where}: required")
        elif kind == "extra_forbidden":
            messages.append(f"{where}: unknown field")
        elif kind == "value_error":
            messages.append(f"{where}: {err.get('ctx', {}).get('error', err.get('msg'))}")
        else:
            messages.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return status, messages


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> Response:
    """`body` as compact JSON (orjson: a tenth of the stdlib's cost on an answer), every answer's
    one encoder."""
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None,
               **extra: Any) -> Response:
    return json_response({"error": message, **extra}, status, headers)
