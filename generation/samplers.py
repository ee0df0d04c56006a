"""Samplers by the names people know them by (AUTOMATIC1111's), as diffusers schedulers.

Each name is a diffusers scheduler class and the options that give it A1111's algorithm and
sigma schedule: the same method, not the same pixels (the programs differ in small ways).
A job records the name, the class and the options, so it runs the same way again even if
this table changes; a job recorded before samplers had names carries only a class name and
runs that class on the model's own scheduler config, as it did.

Flow-matching models (SD3, Flux) are not trained on a noise schedule these k-diffusion
samplers know: they take flow-matching Euler only, under its familiar name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from generation.errors import InvalidRequest

# k-diffusion (which A1111 runs) spaces its sigmas evenly over the training timesteps.
_K = {"timestep_spacing": "linspace"}
_KARRAS = {"use_karras_sigmas": True}


@dataclasses.dataclass(frozen=True, slots=True)
class Sampler:
    name: str
    scheduler: str  # a diffusers scheduler class
    options: Mapping[str, Any]

    @property
    def steps_once(self) -> bool:
        """A multistep solver steps each timestep once: on a cosine noise schedule, Karras
        sigmas map to repeated timesteps that it cannot step (second-order ones can)."""
        return self.scheduler == "DPMSolverMultistepScheduler"


def _table(*samplers: Sampler) -> dict[str, Sampler]:
    return {sampler.name: sampler for sampler in samplers}


# For models trained to predict noise or velocity (SD 1.x, 2.x, XL and their fine-tunes).
NOISE_SAMPLERS = _table(
    Sampler("Euler", "EulerDiscreteScheduler", _K),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", _K),
    Sampler("Heun", "HeunDiscreteScheduler", _K),
    Sampler("LMS", "LMSDiscreteScheduler", _K),
    Sampler("DPM2", "KDPM2DiscreteScheduler", _K),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {**_K, "algorithm_type": "dpmsolver++"}),
    Sampler(
        "DPM++ 2M Karras",
        "DPMSolverMultistepScheduler",
        {**_K, **_KARRAS, "algorithm_type": "dpmsolver++"},
    ),
    # A1111's "DPM++ SDE" is k-diffusion's stochastic sampler: DPMSolverSDEScheduler (torchsde).
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", _K),
    Sampler("DPM++ SDE Karras", "DPMSolverSDEScheduler", {**_K, **_KARRAS}),
    Sampler(
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {**_K, **_KARRAS, "algorithm_type": "sde-dpmsolver++"},
    ),
    Sampler("DDIM", "DDIMScheduler", {}),
    Sampler("UniPC", "UniPCMultistepScheduler", {}),
    Sampler("LCM", "LCMScheduler", {}),
)
# For flow-matching models (SD3, Flux): their own schedule, shift included, from their config.
# (Flux's pipeline hands the scheduler its sigmas, which FlowMatchHeun cannot take.)
FLOW_SAMPLERS = _table(Sampler("Euler", "FlowMatchEulerDiscreteScheduler", {}))
SAMPLER_NAMES = tuple(NOISE_SAMPLERS)

# The familiar name of a model's own scheduler, for the infotext of a job that named none.
_CLASS_NAMES = {
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2",
    "DPMSolverSDEScheduler": "DPM++ SDE",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
    "FlowMatchEulerDiscreteScheduler": "Euler",
    "FlowMatchHeunDiscreteScheduler": "Heun",
}


def samplers_for(flow: bool) -> dict[str, Sampler]:
    return FLOW_SAMPLERS if flow else NOISE_SAMPLERS


def find_sampler(name: str, *, flow: bool, model_name: str = "") -> Sampler:
    """The sampler a request names (any case); refused with the list a model takes."""
    table = samplers_for(flow)
    wanted = " ".join(name.split()).casefold()
    for sampler in table.values():
        if sampler.name.casefold() == wanted:
            return sampler
    listed = ", ".join(table)
    if flow and wanted in (known.casefold() for known in NOISE_SAMPLERS):
        raise InvalidRequest(
            "sampler",
            f"{name!r} is not for a flow-matching model like {model_name}: it takes {listed}",
        )
    raise InvalidRequest("sampler", f"must be one of {listed}, not {name!r}")


def familiar_name(sampler: str | None, scheduler: str) -> str:
    """What the infotext says: the job's sampler, else its scheduler's familiar name."""
    if sampler:
        return sampler
    return _CLASS_NAMES.get(scheduler, scheduler)


# Schedulers that call the model twice a step (second-order): a job's cost counts both.
SECOND_ORDER = frozenset(
    {
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "DPMSolverSDEScheduler",
        "FlowMatchHeunDiscreteScheduler",
    }
)


def calls_per_step(scheduler: str) -> int:
    return 2 if scheduler in SECOND_ORDER else 1
