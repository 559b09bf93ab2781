"""Numbers the papers published, as data, with where each comes from.

They are printed beside our own numbers in results and comparison tables, under the eval preset
whose protocol produced them, and only beside runs of the benchmark they were measured on (:func:`published_rows`'s
``runs``: ViStory runs get ViStoryBench's leaderboard, of their split; other runs never get it). ConsiStory only
plots its numbers (no table), so it has no rows here; CharaConsist and Story2Board report no ConsiStory-Human numbers
(Story2Board evaluates on its own Rich Storyboard Benchmark).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PublishedRow:
    """One row of a paper's results table.

    Attributes:
        method: The method as named in the table.
        venue: Where the method was published.
        protocol: The eval preset that reproduces the table's protocol.
        benchmark: The benchmark the numbers are on.
        split: The split ('single', ViStoryBench's 'full' or 'lite', ...) or '' when the paper does not say.
        values: Metric name (``presets.METRICS`` keys, plus e.g. 'dreamsim') -> value, on the paper's scale.
        source: The table and document the numbers are read from.
        note: Anything that qualifies the row.
    """

    method: str
    venue: str
    protocol: str
    benchmark: str
    split: str
    values: Mapping[str, float] = field(default_factory=dict)
    source: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "venue": self.venue,
            "protocol": self.protocol,
            "benchmark": self.benchmark,
            "split": self.split,
            "values": dict(self.values),
            "source": self.source,
            "note": self.note,
        }


IDENTITYSTORY_SOURCE = (
    "IdentityStory (AAAI 2026, arXiv 2512.23519), main table on its poster and project page (docs/metrics.md §1.3)"
)
IDENTITYSTORY_PHOTOMAKER_SOURCE = "IdentityStory poster, 'Comparison with PhotoMaker' table (docs/metrics.md §1.3)"
ONE_PROMPT_SOURCE = "1Prompt1Story (ICLR 2025, arXiv 2501.13554), Table 1 (docs/metrics.md §3.2)"
IDENTITYSTORY_SPLIT_NOTE = "split not stated on the poster; docs/metrics.md §1.3 reads it as single-character"


def _identitystory(method: str, venue: str, *values: float) -> PublishedRow:
    names = ("clip_t", "clip_t_c", "clip_i", "face_sim", "qalign_gen", "qalign_aes")
    return PublishedRow(
        method,
        venue,
        "identitystory",
        "ConsiStory-Human",
        "single",
        dict(zip(names, values, strict=True)),
        IDENTITYSTORY_SOURCE,
        IDENTITYSTORY_SPLIT_NOTE,
    )


def _one_prompt(method: str, base: str, clip_t: float, clip_i: float, dreamsim: float) -> PublishedRow:
    return PublishedRow(
        method,
        base,
        "1prompt1story",
        "ConsiStory+",
        "",
        {"clip_t": clip_t, "clip_i": clip_i, "dreamsim": dreamsim},
        ONE_PROMPT_SOURCE,
        "background noised with CarveKit before CLIP-I",
    )


VISTORYBENCH = "ViStoryBench"
VISTORYBENCH_PROTOCOL = "vistorybench"
VISTORYBENCH_METRICS = (
    "cross_csd", "self_csd", "cids_cross", "cids_self", "aesthetic", "inception_score", "occm",
    "prompt_align_scene", "prompt_align_camera", "prompt_align_character_action", "single_character_action",
    "prompt_align",
)  # fmt: skip
"""Our keys of the leaderboard's columns, in its order (docs/metrics.md, "ViStoryBench"): Cross / Self CSD Score,
Cross / Self Cref Score (CIDS), Aesthetics Score, Inception Score, OCCM, Prompt Align's Scene, Camera, Global
Character Action and Local/Single Character Action, and its Prompt Align Avg."""
VISTORYBENCH_SOURCE = (
    "ViStoryBench leaderboard, 'Detailed Leaderboard' page of vistorybench.github.io (ViStoryBench/vistorybench.github.io, "
    "src/pages/leaderboard_detail.astro at commit b35fc30, 2025-12-14), its Full and Lite tables (docs/metrics.md)"
)
VISTORYBENCH_NOTE = (
    "in parentheses the leaderboard's mode of the method (e.g. ImgRef_Photomaker); the page does not say in which "
    "language the stories were read"
)

# The page's two tables, row by row in its order: (model, mode, *values in VISTORYBENCH_METRICS order), as printed.
_VISTORYBENCH_FULL = (
    ("CharaConsist", "Base", 0.282101728, 0.553242225, 0.3152725, 0.5186325, 5.878994894, 13.79612827, 57.94501375, 3.576667666, 3.392475732, 2.756921845, 2.226666667, 2.836),
    ("OmniGen2", "Base", 0.453966918, 0.600057826, 0.54808375, 0.64661375, 5.249418215, 11.0496645, 70.18747875, 3.484374273, 3.428118927, 2.874115189, 2.6125, 3.002),
    ("QwenImageEdit2509", "base", 0.380702687, 0.593238938, 0.4751575, 0.5738875, 5.501412533, 13.41742516, 59.80161, 3.913092649, 3.234621697, 3.44021689, 2.5375, 3.133),
    ("SeedStory", "Base", 0.226688106, 0.748068074, 0.287096154, 0.586796154, 3.824778534, 6.303654671, 44.40513333, 1.962736126, 1.828761781, 0.457698773, 0.666666667, 1.117),
    ("StoryAdapter", "ImgRef_Scale0", 0.455949334, 0.548479901, 0.45987125, 0.60473625, 4.994848698, 12.9780941, 69.046555, 2.06600055, 3.446392983, 2.605591075, 2.65, 2.684),
    ("StoryAdapter", "ImgRef_Scale5", 0.325291427, 0.736620346, 0.40109375, 0.625555, 4.88601606, 13.72736168, 59.33577, 1.925599026, 3.280277642, 2.551955191, 2.4625, 2.537),
    ("StoryAdapter", "TextOnly_Scale0", 0.280088269, 0.461685426, 0.3998525, 0.53842, 5.174523708, 16.34035873, 63.0812625, 2.128623345, 3.437058718, 2.684880001, 2.5625, 2.675),
    ("StoryAdapter", "TextOnly_Scale5", 0.317937836, 0.733205564, 0.395215, 0.6240875, 4.90333285, 13.13239574, 59.5895625, 1.96369276, 3.325108873, 2.579889251, 2.3375, 2.509),
    ("StoryDiffusion", "ImgRef_Photomaker", 0.340350785, 0.5466562, 0.43584875, 0.5651725, 5.125404203, 10.0571909, 57.35770625, 2.004365489, 3.445991242, 2.642795583, 2.675, 2.689),
    ("StoryDiffusion", "Original", 0.26935833, 0.627685379, 0.39666625, 0.6216225, 5.762796941, 15.71576595, 62.94683125, 3.177645672, 3.092612461, 1.987846549, 1.875, 2.402),
    ("StoryGen", "AutoRegressive", 0.379493571, 0.53958145, 0.42760625, 0.5755875, 4.022261317, 8.725982666, 51.0737575, 1.157935634, 2.248522056, 1.426224884, 1.9125, 1.732),
    ("StoryGen", "Mix", 0.282680611, 0.579533097, 0.41447625, 0.59281, 3.740455372, 7.311157703, 41.0536975, 1.022627716, 2.29887726, 1.397113214, 1.9625, 1.729),
    ("StoryGen", "MultiImageCondition", 0.370676669, 0.531451248, 0.41688625, 0.56811375, 4.021780138, 8.891377449, 50.77945375, 1.260133706, 2.288421301, 1.422111998, 1.7125, 1.679),
    ("TheaterGen", "Base", 0.184429483, 0.391599551, 0.347895, 0.578215, 4.896972486, 14.88989925, 55.36698125, 2.764702067, 1.811069182, 0.925485257, 1.0625, 1.525),
    ("UNO", "Base", 0.39098354, 0.601657592, 0.48458375, 0.61971, 5.231587752, 12.40049267, 74.23103875, 3.509915128, 3.246662728, 2.792733115, 2.475, 2.900),
    ("AnimDirector", "SD3", 0.28781174, 0.510147267, 0.40145, 0.5784675, 5.589688663, 12.01537609, 67.37538625, 3.6431813, 3.074853902, 3.323970872, 2.6875, 3.083),
    ("MMStoryAgent", "Base", 0.238202241, 0.669013227, 0.3881775, 0.5957675, 5.882790551, 9.093803406, 61.5444625, 2.924975944, 2.611569623, 1.850200579, 1.625, 2.127),
    ("MovieAgent", "ROICtrl", 0.193143882, 0.502232933, 0.3603475, 0.55989875, 4.634387907, 11.61257744, 63.58398875, 1.338974406, 2.587652564, 1.357143708, 1.5125, 1.662),
    ("MovieAgent", "SD3", 0.299014463, 0.478598833, 0.4001375, 0.54418125, 5.318487555, 14.98982716, 64.5802875, 3.49514006, 3.18413852, 3.319517075, 2.725, 3.090),
    ("Vlogger", "ImgRef", 0.258744665, 0.452549425, 0.36219375, 0.55435, 4.284577601, 9.770858765, 76.59666375, 1.707219599, 3.087474963, 2.366335625, 2.4375, 2.407),
    ("Vlogger", "TextOnly", 0.200743959, 0.40650595, 0.3460325, 0.5475625, 4.277468481, 10.28503704, 75.414675, 1.668860832, 3.037219023, 2.319041804, 2.2375, 2.300),
)  # fmt: skip
_VISTORYBENCH_LITE = (
    ("CharaConsist", "Base", 0.332958232, 0.646050281, 0.346805, 0.53855, 5.778289875, 10.84172535, 62.09642, 3.690879372, 3.611278195, 2.8639915, 2.210526316, 2.917),
    ("OmniGen2", "Base", 0.49088691, 0.648067808, 0.575795, 0.667635, 5.205899249, 8.211501122, 73.440075, 3.49272976, 3.294121339, 2.961295254, 2.55, 2.970),
    ("QwenImageEdit2509", "base", 0.404483591, 0.614042177, 0.48244, 0.54108, 5.460365499, 10.55544472, 61.26859, 3.885191545, 2.988917622, 3.52504529, 2.6, 3.120),
    ("SeedStory", "Base", 0.257923777, 0.762734647, 0.559489474, 0.656031579, 3.812115604, 4.897685528, 64.32689474, 2.168518451, 1.928351297, 0.486188649, 2.894736842, 2.075),
    ("StoryAdapter", "ImgRef_Scale0", 0.518357578, 0.609331275, 0.49042, 0.604595, 4.892279734, 11.48530388, 70.343925, 1.91307617, 3.439298973, 2.558694991, 2.7, 2.662),
    ("StoryAdapter", "ImgRef_Scale5", 0.371064473, 0.757653784, 0.42528, 0.61925, 4.803404408, 12.02983761, 61.39126, 1.796660987, 3.19763327, 2.383665064, 2.3, 2.396),
    ("StoryAdapter", "TextOnly_Scale0", 0.343325803, 0.514571676, 0.429745, 0.547485, 5.11979912, 12.72167969, 65.317485, 1.965625674, 3.422119576, 2.736261719, 2.65, 2.685),
    ("StoryAdapter", "TextOnly_Scale5", 0.353366091, 0.751643874, 0.4163, 0.633755, 4.851712874, 10.59293747, 61.5699, 1.854368158, 3.228329621, 2.477149828, 2.3, 2.432),
    ("StoryDiffusion", "ImgRef_Photomaker", 0.40901123, 0.611355214, 0.460465, 0.57492, 5.207344672, 8.176711082, 62.47787, 1.910785618, 3.414780069, 2.639483995, 2.75, 2.693),
    ("StoryDiffusion", "Original", 0.293280387, 0.680224277, 0.409125, 0.640715, 5.828540146, 12.99354362, 67.070335, 3.210735233, 2.997153933, 1.920366815, 1.95, 2.406),
    ("StoryGen", "AutoRegressive", 0.405437977, 0.562215627, 0.43706, 0.59087, 4.091010387, 7.154542923, 52.982325, 1.050689991, 2.323410961, 1.431396094, 1.75, 1.661),
    ("StoryGen", "Mix", 0.31614477, 0.617440604, 0.42872, 0.60958, 3.862157754, 6.248496056, 40.13338, 0.887101632, 2.411248686, 1.386516452, 2.05, 1.757),
    ("StoryGen", "MultiImageCondition", 0.396437858, 0.551104372, 0.420535, 0.60194, 4.088393089, 7.669743061, 52.527055, 1.178295422, 2.246119001, 1.487879622, 1.5, 1.582),
    ("TheaterGen", "Base", 0.22127979, 0.410833261, 0.354215, 0.536725, 4.943093552, 13.60222054, 54.928075, 2.848989682, 1.941898598, 1.019353643, 1.15, 1.622),
    ("UNO", "Base", 0.425227913, 0.647670903, 0.5115, 0.630315, 5.134146589, 10.50181866, 70.88441, 3.542649098, 3.154869438, 2.976098521, 2.55, 2.955),
    ("AnimDirector", "SD3", 0.30474288, 0.557812691, 0.422875, 0.593185, 5.602817362, 9.942073822, 72.033795, 3.621959578, 2.932399419, 3.387767244, 2.85, 3.128),
    ("MMStoryAgent", "Base", 0.260646785, 0.661033769, 0.384595, 0.59783, 5.910447238, 8.089891434, 58.235505, 2.965248009, 2.4517335, 1.642740761, 1.5, 2.012),
    ("MovieAgent", "ROICtrl", 0.235563366, 0.564141511, 0.371875, 0.568145, 4.688716209, 10.0608139, 64.41473, 1.284257891, 2.719711976, 1.58405289, 1.75, 1.818),
    ("MovieAgent", "SD3", 0.346310431, 0.539476277, 0.432535, 0.582, 5.317916727, 12.0440979, 67.28919, 3.406009377, 3.052264257, 3.404355905, 2.65, 3.033),
    ("Vlogger", "ImgRef", 0.298732243, 0.496834425, 0.372905, 0.519085, 4.242339268, 8.827468872, 79.144735, 1.749048841, 3.143481963, 2.42859851, 2.35, 2.404),
    ("Vlogger", "TextOnly", 0.239923022, 0.461644385, 0.368525, 0.52414, 4.239843533, 8.408939362, 77.133565, 1.706868354, 3.002645751, 2.404205339, 2.25, 2.323),
    ("AIbrm", "Base", 0.411924134, 0.730196851, 0.55679, 0.7399, 5.72123118, 9.533270836, 75.5348, 3.5595439, 3.053986806, 2.53154723, 2.05, 2.649),
    ("DouBao", "Base", 0.366719645, 0.695391768, 0.44598, 0.642005, 5.614623487, 9.880890846, 65.23172, 3.976510989, 3.228241096, 3.769583263, 2.95, 3.375),
    ("MOKI", "Base", 0.214389102, 0.694267965, 0.371755, 0.62105, 5.794278466, 10.35705853, 45.96282, 2.883243777, 1.876639047, 0.936276185, 1.1, 1.579),
    ("MorphicStudio", "Base", 0.577072922, 0.628211553, 0.602615789, 0.676868421, 4.956604087, 9.003818512, 60.79421579, 3.362877966, 3.072559567, 2.656330181, 2.105263158, 2.660),
    ("ShenBi", "Base", 0.274585337, 0.575265148, 0.417561111, 0.585405556, 5.069995527, 11.60050774, 61.32988333, 3.787412323, 2.805579041, 3.454077688, 2.722222222, 3.098),
    ("TypeMovie", "Base", 0.325036749, 0.64637769, 0.4643, 0.621315, 5.320682597, 11.15472889, 74.13917, 2.86312367, 3.001577493, 2.60480446, 2.3, 2.614),
    ("Gemini", "Base", 0.361045845, 0.572879374, 0.572594118, 0.677441176, 4.906427097, 10.11840534, 74.81918235, 3.564749243, 3.260515449, 3.197639952, 3.294117647, 3.322),
    ("GPT4o", "Base", 0.480765598, 0.680078561, 0.419826316, 0.521910526, 5.490427657, 9.020773888, 69.3312, 3.907062597, 3.649050103, 3.781113341, 2.684210526, 3.341),
    ("NanoBanana", "Gemini2.5FlashImagePreview", 0.446724217, 0.657328133, 0.55347, 0.642145, 5.611582331, 10.54487324, 64.85574, 3.991071429, 3.319035493, 3.709418072, 3.25, 3.504),
    ("NanoBanana", "Gemini3ProImagePreview", 0.384753016, 0.621867986, 0.581045, 0.65344, 5.539814283, 12.4985, 59.96908, 3.968600945, 3.457954879, 3.827714595, 3.2, 3.531),
    ("Seedream4", "base", 0.368798404, 0.585419743, 0.279536842, 0.538947368, 5.20844836, 12.11877632, 49.45305263, 3.980523934, 3.425904196, 3.82314256, 0.526315789, 2.456),
    ("Sora2", "ALL_ImgRef", 0.514956351, 0.713321149, 0.765683333, 0.83915, 4.724243494, 6.528349876, 81.41773333, 3.446371276, 3.286777438, 3.427909346, 2.5, 3.032),
    ("Sora2", "ALL_TextOnly", 0.364737221, 0.68488753, 0.36398, 0.56098, 4.52029395, 9.680335045, 72.67238667, 3.237764925, 3.355388043, 3.438435726, 2.866666667, 3.153),
)  # fmt: skip


def _vistorybench(split: str, model: str, mode: str, *values: float) -> PublishedRow:
    return PublishedRow(
        model,
        mode,
        VISTORYBENCH_PROTOCOL,
        VISTORYBENCH,
        split,
        dict(zip(VISTORYBENCH_METRICS, values, strict=True)),
        VISTORYBENCH_SOURCE,
        VISTORYBENCH_NOTE,
    )


VISTORYBENCH_ROWS = (
    *(_vistorybench("full", *row) for row in _VISTORYBENCH_FULL),
    *(_vistorybench("lite", *row) for row in _VISTORYBENCH_LITE),
)


PUBLISHED_ROWS: tuple[PublishedRow, ...] = (
    _identitystory("ConsiStory", "SIGGRAPH'24", 35.5, 30.1, 78.2, 17.1, 3.75, 4.71),
    _identitystory("StoryDiffusion", "NeurIPS'24", 34.0, 30.7, 85.2, 27.1, 3.58, 4.20),
    _identitystory("Story-Adapter", "arXiv'24", 34.3, 29.1, 76.6, 23.9, 3.65, 4.42),
    _identitystory("1Prompt1Story", "ICLR'25", 34.9, 29.7, 79.8, 23.5, 4.16, 4.81),
    _identitystory("IdentityStory", "AAAI'26", 35.4, 31.1, 85.8, 55.5, 4.25, 4.92),
    PublishedRow(
        "PhotoMaker",
        "CVPR'24",
        "identitystory",
        "ConsiStory-Human",
        "single",
        {"clip_t": 34.6, "clip_i": 84.1, "face_sim": 47.9, "qalign_gen": 3.84},
        IDENTITYSTORY_PHOTOMAKER_SOURCE,
        IDENTITYSTORY_SPLIT_NOTE,
    ),
    _one_prompt("Vanilla SD1.5", "SD1.5", 0.8353, 0.7474, 0.5873),
    _one_prompt("Vanilla SDXL", "SDXL", 0.9074, 0.8165, 0.5292),
    _one_prompt("BLIP-Diffusion", "SD1.5", 0.7607, 0.8863, 0.2830),
    _one_prompt("Textual Inversion", "SDXL", 0.8378, 0.8229, 0.4268),
    _one_prompt("The Chosen One", "SDXL", 0.7614, 0.7831, 0.4929),
    _one_prompt("PhotoMaker", "SDXL", 0.8651, 0.8465, 0.3996),
    _one_prompt("IP-Adapter", "SDXL", 0.8458, 0.9429, 0.1462),
    _one_prompt("ConsiStory (re-impl.)", "SDXL", 0.8769, 0.8737, 0.3188),
    _one_prompt("StoryDiffusion", "SDXL", 0.8877, 0.8755, 0.3212),
    _one_prompt("Naive Prompt Reweighting", "SDXL", 0.8411, 0.8916, 0.2548),
    _one_prompt("1Prompt1Story", "SDXL", 0.8942, 0.9117, 0.1993),
    *VISTORYBENCH_ROWS,
)


FORMAT_BENCHMARKS: Mapping[str, str] = {"vistory": VISTORYBENCH}
"""Story formats that belong to one benchmark (a ViStory ``story.json`` is ViStoryBench's, whatever folder it is in):
beside their runs only that benchmark's rows are shown, and its rows beside no other runs. Runs of other formats
(ConsiStory-Human JSON, our YAML, or a manifest that does not say) keep every other row of their protocol, as the
protocol's caveats qualify them."""


def vistory_split(suite: str) -> str:
    """ViStoryBench's split of a run's suite folder: 'lite' for the folder ``storycast benchmark --split lite``
    names ``<suite>-lite`` (``benchmark.select_split``), else 'full'."""
    return "lite" if suite.rstrip("/").rpartition("/")[2].endswith("-lite") else "full"


def _belongs(row: PublishedRow, source_format: str | None, suite: str) -> bool:
    """Whether ``row`` was measured on the benchmark (and ViStoryBench split) of a run of ``source_format`` in
    ``suite``."""
    benchmark = FORMAT_BENCHMARKS.get(source_format or "")
    if benchmark is None:
        return row.benchmark not in FORMAT_BENCHMARKS.values()
    return row.benchmark == benchmark and (benchmark != VISTORYBENCH or row.split == vistory_split(suite))


def published_rows(protocol: str, runs: Iterable[tuple[str | None, str]] | None = None) -> list[PublishedRow]:
    """The published rows measured with ``protocol`` (an eval preset name), in table order; with ``runs`` ((story
    format, suite) of each run of a table), only those measured on the runs' benchmarks (:data:`FORMAT_BENCHMARKS`).
    A table without runs shows every row of its protocol."""
    rows = [row for row in PUBLISHED_ROWS if row.protocol == protocol]
    pairs = set(runs or ())
    if not pairs:
        return rows
    return [row for row in rows if any(_belongs(row, source_format, suite) for source_format, suite in pairs)]
