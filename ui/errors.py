"""What an expected failure says to the visitor, in the visitor's language.

The library raises ``ValueError`` with English sentences (a library speaks one language, and its callers match on
nothing but the type). The page says them in Chinese too: each message the UI can show has a pattern here whose
groups (names, numbers, ids) are carried into the Chinese sentence. A message with no pattern is shown in English
behind a Chinese lead, so that nothing is lost; a test keeps every message the UI can reach out of that fallback.
"""

from __future__ import annotations

import re

#: The names ``ui.common.int_arg`` gives its arguments, as the Chinese page labels them.
ARG_NAMES_ZH = {
    "T": "T",
    "t": "t",
    "seed": "随机种子",
    "steps": "步数",
    "batch size": "批量大小",
    "number of seeds": "种子数",
    "x_t": "x_t",
    "x₀": "x₀",
    "jump": "一次后退的步数",
    "training points": "训练点数",
}

#: (English pattern, Chinese template): the template's ``{name}`` fields are the pattern's named groups.
ZH: list[tuple[str, str]] = [
    # arguments (ui.common.int_arg)
    (r"(?P<arg>.+?) must be a number, got (?P<got>.+)", "{arg} 必须是数字，收到的是 {got}"),
    (r"(?P<arg>.+?) must be a finite number, got (?P<got>.+)", "{arg} 必须是有限的数，收到的是 {got}"),
    (r"(?P<arg>.+?) must be a whole number, got (?P<got>.+)", "{arg} 必须是整数，收到的是 {got}"),
    (
        r"(?P<arg>.+?) must be between (?P<lo>\S+) and (?P<hi>\S+), got a number of (?P<n>\d+) digits",
        "{arg} 必须在 {lo} 到 {hi} 之间，收到的是一个 {n} 位数",
    ),
    (
        r"(?P<arg>.+?) must be between (?P<lo>\S+) and (?P<hi>\S+), got (?P<got>.+)",
        "{arg} 必须在 {lo} 到 {hi} 之间，收到的是 {got}",
    ),
    # a sampler's timesteps (ddpm_core.timesteps: DPM-Solver++ and UniPC with leading spacing at N = T)
    (
        r"timestep_spacing=(?P<sp>\S+) with steps_offset=(?P<off>-?\d+) gives timesteps outside \[0, (?P<hi>\d+)\] "
        r"or repeated for (?P<n>\d+) steps \(first (?P<first>-?\d+), last (?P<last>-?\d+)\); choose fewer steps or "
        r"another spacing",
        "{n} 步时，时间步间隔 {sp}（偏移 {off}）给出的时间步超出 [0, {hi}] 或有重复（第一个 {first}，最后一个 {last}）；"
        "请减少步数或换一种间隔",
    ),
    # uploads (ui.common, ddpm_core.imaging)
    (r"Upload an image \(or pick an example\) first\.", "请先上传一张图片（或选一个示例）。"),
    (r"The uploaded file is no longer available; please upload it again\.", "上传的文件已不可用，请重新上传。"),
    (
        r"image refused: it declares more pixels than the (?P<mp>\d+) MP limit \(a decompression bomb\?\)",
        "图片被拒绝：它声明的像素数超过 {mp} MP 的上限（疑似解压炸弹）",
    ),
    (
        r"(?P<file>.+?) is corrupt or truncated and cannot be decoded(?: as (?P<fmt>\S+))? \((?P<why>.*)\)",
        "{file} 已损坏或不完整，无法解码（{why}）",
    ),
    (
        r"(?P<file>.+?) is (?P<kind>.+?), not an image in an accepted format: .*",
        "{file} 是 {kind}，不是可接受格式的图片：请上传 PNG、JPEG、WebP、GIF、BMP、TIFF 或二进制 PPM/PGM/PBM 图片（SVG、PDF、PostScript 和 HTML 都不是图片）",
    ),
    (
        r"(?P<file>.+?) is not an image in an accepted format: .*",
        "{file} 不是可接受格式的图片：请上传 PNG、JPEG、WebP、GIF、BMP、TIFF 或二进制 PPM/PGM/PBM 图片（SVG、PDF、PostScript 和 HTML 都不是图片）",
    ),
    (r"cannot read (?P<file>.+?): (?P<why>.+)", "无法读取 {file}：{why}"),
    (r"(?P<file>.+?) is (?P<mb>[\d.]+) MB; the limit is (?P<limit>\d+) MB", "{file} 有 {mb} MB，上限是 {limit} MB"),
    (r"the file is empty \(0 bytes\)", "文件是空的（0 字节）"),
    (r"image has no pixels \((?P<size>.+)\)", "图片没有像素（{size}）"),
    (
        r"image is (?P<size>\S+) = (?P<mp>\d+) MP; the limit is (?P<limit>\d+) MP",
        "图片为 {size} = {mp} MP，上限是 {limit} MP",
    ),
    (
        r"image is (?P<size>\S+): an aspect ratio over (?P<r>\d+):1 is not supported",
        "图片为 {size}：不支持超过 {r}:1 的长宽比",
    ),
    # choices
    (r"Tick at least one schedule\.", "请至少勾选一个调度。"),
    (r"selected must be a list of schedule names, got (?P<got>.+)", "所选调度必须是调度名的列表，收到的是 {got}"),
    (r"Tick at least one sampler · steps pair\.", "请至少勾选一组“采样器 · 步数”。"),
    (
        r"unknown (?P<what>sampler|variance|schedule|pair|dataset|prediction type) (?P<got>.+?); choose (?:one of|from) (?P<options>.+)",
        "未知的{what} {got}，可选：{options}",
    ),
    (r"eta must be between 0 and 1", "eta 必须在 0 到 1 之间"),
    (
        r"(?P<schedule>\S+) needs T ≥ (?P<lo>\d+): it scales β_end = 0\.02 by 1000/T, which must stay below 1",
        "{schedule} 需要 T ≥ {lo}：它把 β_end = 0.02 乘以 1000/T，结果必须小于 1",
    ),
    # models (ddpm_core.checkpoints)
    (
        r"no model given: pick a bundled model or type a Hub id such as (?P<example>\S+)",
        "没有指定模型：请选择内置模型，或输入 Hub id，例如 {example}",
    ),
    (r"a model name must be text .*, got (?P<type>\S+)", "模型名必须是文本（内置模型名或 Hub id），收到的是 {type}"),
    (
        r"(?P<head>.+?)\.\.\. \((?P<n>\d+) characters\) is too long for a model name or Hub id \(at most (?P<most>\d+)\)",
        "{head}…（{n} 个字符）作为模型名或 Hub id 太长（最多 {most} 个）",
    ),
    (
        r"(?P<name>.+?) is not allowed: give a bundled model name \((?P<bundled>.*)\) or a Hub id of the form owner/name",
        "不允许使用 {name}：请给出内置模型名（{bundled}）或 owner/name 形式的 Hub id",
    ),
    (
        r"no bundled model named (?P<name>.+?); bundled: (?P<bundled>.*)\. Hub models are given as owner/name",
        "没有名为 {name} 的内置模型；内置模型：{bundled}。Hub 模型请写成 owner/name",
    ),
    (
        r"(?P<name>.+?) is neither a bundled model name nor a Hub id of the form owner/name",
        "{name} 既不是内置模型名，也不是 owner/name 形式的 Hub id",
    ),
    (
        r"the Hugging Face Hub cannot be reached and (?P<id>\S+) is not in the local cache; "
        r"the bundled model \((?P<bundled>.*)\) works offline",
        "无法连接 Hugging Face Hub，且本地缓存中没有 {id}；内置模型（{bundled}）可离线使用",
    ),
    (
        r"the Hugging Face Hub could not be reached for (?P<id>\S+?)(?: \((?P<why>\w+)\))?; "
        r"try again later or use the bundled model \((?P<bundled>.*)\)",
        "无法连接 Hugging Face Hub 获取 {id}；请稍后再试，或使用内置模型（{bundled}）",
    ),
    (
        r"no model (?P<id>.+?) on the Hugging Face Hub \(or it is private\)",
        "Hugging Face Hub 上没有模型 {id}（或它是私有的）",
    ),
    (r"(?P<id>\S+) is gated: it needs an access token", "{id} 是受限模型：需要访问令牌"),
    (
        r"(?P<id>\S+) has a UNet config but no diffusion_pytorch_model weights(?P<offline> in the local cache .*)?",
        "{id} 有 UNet 配置，但没有 diffusion_pytorch_model 权重{offline}",
    ),
    (
        r"(?P<id>\S+) is not a UNet2DModel checkpoint(?: \(its model is an? (?P<cls>\S+)\))?.*",
        "{id} 不是 UNet2DModel 检查点：只支持无条件、像素空间的 DDPM UNet",
    ),
    (
        r"(?P<id>\S+) is an? (?P<cls>.+?), not a UNet2DModel: only unconditional pixel-space DDPM UNets are supported",
        "{id} 是 {cls}，不是 UNet2DModel：只支持无条件、像素空间的 DDPM UNet",
    ),
    (r"(?P<name>.+?) resolves outside (?P<root>\S+)/", "{name} 指向 {root}/ 之外"),
    (r"(?P<id>\S+): unreadable config\.json \((?P<why>.*)\)", "{id}：config.json 无法读取（{why}）"),
    (r"(?P<id>\S+): config\.json lacks (?P<key>\S+)", "{id}：config.json 缺少 {key}"),
    (
        r"(?P<id>\S+): no diffusion_pytorch_model\.safetensors or \.bin next to its config",
        "{id}：配置旁没有 diffusion_pytorch_model.safetensors 或 .bin 权重",
    ),
    (
        r"(?P<id>\S+): weights of (?P<gb>[\d.]+) GB are too large for a DDPM UNet",
        "{id}：权重有 {gb} GB，对 DDPM UNet 来说太大",
    ),
    (
        r"(?P<id>\S+): weights do not fit the config \((?P<why>.*)\)",
        "{id}：权重与配置不符（{why}）",
    ),
    (
        r"(?P<id>\S+): the weights could not be loaded safely \((?P<why>.*)\)",
        "{id}：权重无法安全加载（{why}）",
    ),
    (r"unreadable scheduler config (?P<file>\S+): (?P<why>.*)", "调度器配置 {file} 无法读取：{why}"),
    (
        r"(?P<id>\S+): out_channels=(?P<n>\d+) fits neither a fixed nor a learned variance",
        "{id}：out_channels={n} 既不符合固定方差，也不符合学习方差",
    ),
    # notes on a loaded model (ddpm_core.checkpoints), shown under the samples
    (
        r"no scheduler config found: assumed DDPM's linear 1000-step schedule",
        "未找到调度器配置：按 DDPM 的线性 1000 步调度处理",
    ),
    (r"the UNet outputs 2C channels: using learned_range variance", "UNet 输出 2C 个通道：使用 learned_range 方差"),
    (r"Draw a shape on the canvas first: it is \(nearly\) empty\.", "请先在画布上画一个形状：画布（几乎）是空的。"),
    (
        r"This data set has no classes: choose “none \(unconditional\)” as the class\.",
        "这个数据集没有类别：类别请选“无（无条件）”。",
    ),
    (
        r"This request would cost (?P<cost>[\d,]+) GFLOP \((?P<n>\d+) network evaluations x (?P<b>\d+) image\(s\)\); "
        r"on this CPU one request may cost at most (?P<cap>[\d,]+): choose at most (?P<k>\d+) image\(s\) at this step count",
        "这个请求的计算量是 {cost} GFLOP（{n} 次网络计算 × {b} 张图）；在这台 CPU 上一个请求最多 {cap} GFLOP："
        "在这个步数下最多选 {k} 张图",
    ),
    (
        r"This request would cost (?P<cost>[\d,]+) GFLOP \((?P<n>\d+) network evaluations x (?P<b>\d+) image\(s\)\); "
        r"on this CPU one request may cost at most (?P<cap>[\d,]+): choose fewer steps",
        "这个请求的计算量是 {cost} GFLOP（{n} 次网络计算 × {b} 张图）；在这台 CPU 上一个请求最多 {cap} GFLOP：请减少步数",
    ),
    (r"Train a model first \(the Train button above\)\.", "请先训练模型（上面的“训练”按钮）。"),
    # runs (ui.common); the title of every error message
    (r"Error", "出错了"),
    (r"Sampling was cancelled\.", "采样已取消。"),
    (
        r"Out of memory: try a smaller batch, fewer seeds or a smaller model\.",
        "内存不足：请减小批量、减少种子数或换一个更小的模型。",
    ),
]

_COMPILED = [(re.compile(pattern, re.DOTALL), template) for pattern, template in ZH]

#: Words the English messages fill in, per pattern group, as the Chinese sentence says them.
FIELDS_ZH = {
    "arg": ARG_NAMES_ZH,
    "what": {
        "sampler": "采样器",
        "variance": "方差",
        "schedule": "调度",
        "pair": "组合",
        "dataset": "数据集",
        "prediction type": "预测类型",
    },
    "file": {"the file": "该文件"},
    "offline": {" in the local cache (the Hub is not reachable)": "（本地缓存中没有，且无法连接 Hub）"},
    "cls": {"model without _class_name": "没有 _class_name 的模型"},
    "kind": {
        "a PostScript/EPS document": "PostScript/EPS 文档",
        "a PDF document": "PDF 文档",
        "an ICO icon": "ICO 图标",
        "an ICNS icon": "ICNS 图标",
        "a Photoshop document": "Photoshop 文档",
        "a JPEG 2000 image": "JPEG 2000 图片",
        "a HEIC/AVIF photo (export it as JPEG or PNG first)": "HEIC/AVIF 照片（请先导出为 JPEG 或 PNG）",
        "an SVG drawing": "SVG 矢量图",
        "an HTML page": "HTML 网页",
        "an XML document": "XML 文档",
        "an ASCII PPM/PGM/PBM image": "ASCII 格式的 PPM/PGM/PBM 图片",
    },
}
_CJK_SPACE = re.compile(r"(?<=[\u4e00-\u9fff]) (?=[\u4e00-\u9fff])")
FALLBACK_ZH = "出错了：{message}"


def zh_pattern(message: str) -> str | None:
    """The pattern of ``ZH`` that translates ``message``, or None (a test keeps reachable messages matched)."""
    return next((pattern for (pattern, _), (rx, _) in zip(ZH, _COMPILED, strict=True) if rx.fullmatch(message)), None)


def say(message: str, lang: str = "en") -> str:
    """``message`` (an English ``ValueError`` text) in ``lang``: itself for English, its Chinese form for "zh"."""
    if lang != "zh":
        return message
    for rx, template in _COMPILED:
        m = rx.fullmatch(message)
        if m:
            fields = {k: FIELDS_ZH.get(k, {}).get(v, v) if v else "" for k, v in m.groupdict().items()}
            # a space is kept between Chinese and Latin text, not between two Chinese words ("该文件 有" -> "该文件有")
            return _CJK_SPACE.sub("", template.format(**fields))
    return FALLBACK_ZH.format(message=message)
