"""Settings of ``1prompt1story``, with the authors' defaults.

Sources (byliutao/1Prompt1Story@34e22ac): ``unet/unet_controller.py`` (the class attributes that hold every
hyper-parameter), ``main.py`` (window length 10, seed 42), ``unet/utils.py`` (``load_pipe_from_path``: the
scheduler; ``swr_single_prompt_embeds``: the 0.9 end-token decay), ``unet/pipeline_stable_diffusion_xl.py``
(``__call__``: 50 steps, guidance 5.0) and ``resource/gen_benchmark.py`` (SDXL base, mode "svr-eot", seed 42).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storycast.methods.oneprompt.reweighting import Reweighting
from storycast.pipelines.families import SchedulerName
from storycast.settings import MethodSettings, check_range, setting


@dataclass(frozen=True)
class SvrSettings(MethodSettings):
    """Singular-Value Reweighting of the frame phrases' token embeddings (paper §3.3)."""

    mode: Literal["svr", "svr-eot", "off"] = setting(
        "svr",
        "'svr': each reweighted set holds the phrase's tokens and the end token with its padding (the controller's "
        "Prompt_embeds_mode, main.py and the app); 'svr-eot': the phrase's tokens alone, the end and padding rows "
        "scaled by 0.9 at each reweighting (what resource/gen_benchmark.py sets, so their ConsiStory+ numbers); "
        "'off': no reweighting.",
        flat="svr_mode",
    )
    alpha_weaken: float = setting(
        0.01, "alpha of the other frames' phrases (suppressed first): sigma' = beta sigma exp(-alpha sigma). "
        "Alpha_weaken 0.01; their comments give 0.01 to 0.5.",
    )  # fmt: skip
    beta_weaken: float = setting(0.05, "beta of the other frames' phrases (Beta_weaken 0.05; range 0.05 to 1.0).")
    alpha_enhance: float = setting(
        -0.01, "alpha of the frame's own phrase (expressed last; Alpha_enhance -0.01; range -0.001 to -0.02)."
    )
    beta_enhance: float = setting(1.0, "beta of the frame's own phrase (Beta_enhance 1.0; range 1.0 to 2.0).")

    def validate(self) -> None:
        check_range("beta_weaken", self.beta_weaken, 0)
        check_range("beta_enhance", self.beta_enhance, 0)

    @property
    def suppress(self) -> Reweighting:
        return Reweighting(self.alpha_weaken, self.beta_weaken)

    @property
    def enhance(self) -> Reweighting:
        return Reweighting(self.alpha_enhance, self.beta_enhance)


@dataclass(frozen=True)
class IpcaSettings(MethodSettings):
    """Identity-Preserving Cross-Attention (paper §3.4)."""

    enabled: bool = setting(
        True,
        "The conditional half of every cross-attention layer also attends to the identity prompt's start token "
        "and identity words (Use_ipca True, Ipca_position all blocks, Use_embeds_mask True).",
        flat="ipca",
    )
    dropout: float = setting(
        0.0, "Probability that a query does not see an identity key, drawn per layer call (Ipca_dropout 0.0).",
        flat="ipca_dropout",
    )  # fmt: skip
    start_step: int = setting(0, "First step (0-based) with IPCA (Ipca_start_step 0).", flat="ipca_start_step")

    def validate(self) -> None:
        if not 0 <= self.dropout < 1:
            from storycast.errors import SettingsError

            raise SettingsError(f"ipca_dropout must be at least 0 and below 1, got {self.dropout}.")
        check_range("ipca_start_step", self.start_step, 0)


@dataclass(frozen=True)
class OnePromptSettings(MethodSettings):
    """Settings of 1Prompt1Story."""

    window_length: int = setting(
        10,
        "Most frame phrases in one prompt; a longer story is drawn through circular windows (main.py's "
        "--window_length 10).",
    )
    window_count: Literal["tokens", "words"] = setting(
        "tokens",
        "What must fit in the prompt: 'tokens' (CLIP's 77 tokens, for every frame's window, so no phrase is cut "
        "off; ours) or 'words' (the authors' proxy: whitespace words of the identity prompt and the first frames, "
        "below 77; prompts may then pass 77 tokens and lose their last phrases).",
    )
    scheduler: SchedulerName = setting(
        "euler",
        "Sampler: Euler (load_pipe_from_path uses EulerDiscreteScheduler for every model but Playground v2.5), "
        "or 'model' for the model's own.",
    )
    freeu: bool = setting(
        False, "FreeU (s1=0.6, s2=0.4, b1=1.1, b2=1.2) while drawing (Is_freeu_enabled False, Freeu_parm)."
    )
    svr: SvrSettings = setting(factory=SvrSettings, help="Singular-Value Reweighting.")
    ipca: IpcaSettings = setting(factory=IpcaSettings, help="Identity-Preserving Cross-Attention.")

    def validate(self) -> None:
        check_range("window_length", self.window_length, 1)
