"""The Space's words, in English and 简体中文. Formulas are LaTeX ($...$ inline, $$...$$ display)."""

LANGS = {"English": "en", "简体中文": "zh"}

TEXT = {
    "en": {
        "intro": """# 🌫️ DDPM Explorer
See, understand and run **denoising diffusion** (Ho et al. 2020). Watch a photo dissolve into noise, plot the noise
schedules, and generate images with the repo's own sampler, from a bundled model that works offline or from
Hub checkpoints such as `google/ddpm-cifar10-32`.""",
        "forward": r"""### The forward process $q(x_t \mid x_0)$
Noise is added in $T$ small Gaussian steps, $q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)$.
Their product has a closed form, so any $x_t$ is one draw away from the image:
$$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\qquad \epsilon \sim \mathcal N(0, I),\quad \bar\alpha_t = \textstyle\prod_{s\le t}(1-\beta_s).$$
$\sqrt{\bar\alpha_t}$ is how much image survives, $\sqrt{1-\bar\alpha_t}$ how much noise is mixed in; the
signal-to-noise ratio is $\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$. The same seed always draws the same $\epsilon$.""",
        "posterior": r"""### The "true" posterior $q(x_{t-1} \mid x_t, x_0)$
Given both $x_t$ and the clean image $x_0$, the previous step is exactly Gaussian:
$$q(x_{t-1}\mid x_t, x_0) = \mathcal N\big(\tilde\mu_t, \tilde\beta_t I\big),\quad
\tilde\mu_t = \tfrac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}x_0 + \tfrac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t,\quad
\tilde\beta_t = \tfrac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t.$$
It is called **true** because (1) it follows exactly from the forward process we defined, (2) it is the ideal
distribution to draw $x_{t-1}$ from, and (3) in practice we can only approximate it: at sampling time $x_0$ is
unknown, so the network's *predicted* $x_0$ takes its place. The image on the right is $\tilde\mu_t$ for your upload.""",
        "schedules": r"""### Noise schedules
$\beta_t$ sets how fast information is destroyed. **linear** (Ho et al.): $\beta_t$ from $10^{-4}$ to $0.02$;
**linear_improved** (the teaching notes / improved-diffusion): the same, with both ends scaled by $1000/T$ so any $T$
destroys as much; **scaled_linear**: $\sqrt{\beta}$ linear; **cosine** (Nichol & Dhariwal): $\bar\alpha_t$ follows
$\cos^2$, gentler at both ends; **sigmoid**: $\beta$ along a sigmoid. The last plot is the variance choice of the
reverse step: $\tilde\beta_t$ (**fixed_small**, the true posterior's variance) against $\beta_t$ (**fixed_large**,
Ho et al.'s other choice $\sigma_t^2=\beta_t$); they differ only near $t=0$. The first and last plots use a log
scale ($\log_{10}$): cosine's $\beta_t$ reaches its 0.999 cap at the end and would flatten the others.""",
        "sample": r"""### Sampling = generation
Start from pure noise $x_T \sim \mathcal N(0, I)$ and apply the learned reverse step $T$ times:
$$x_{t-1} = \tilde\mu_t\big(x_t, \hat x_0(x_t, t)\big) + \sigma_t z,\qquad \hat x_0 = \tfrac{1}{\sqrt{\bar\alpha_t}}\big(x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t)\big).$$
**DDPM (fewer steps)** keeps a subset of timesteps with $\beta'_t = 1-\bar\alpha_t/\bar\alpha_{t'}$; **DDIM** takes
$\eta\in[0,1]$: $\eta=0$ is deterministic, $\eta=1$ is DDPM-like. The trajectory shows $x_t$ (top) and the model's
predicted $\hat x_0$ (bottom) as the noise is removed. The sampler is this repo's own `GaussianDiffusion`, proven
equal to diffusers' schedulers by its tests.""",
        "denoise": r"""### Noise, then denoise: generation, not restoration
Noise your image to step $t$, then run the reverse process from there with several seeds. For small $t$ the
results stay close to the original; for large $t$ they keep only its coarse layout and become **new** images of
what the model learned. A DDPM does not store images: it learns a *distribution*. That is also why a DDPM trained on a
single image cannot simply memorise and restore it: one image is one point, and a point is no distribution to
learn from. (Images are centre-cropped and resized to the model's resolution.)""",
        "lang_label": "Language / 语言",
        "tab_forward": "Forward process", "tab_schedules": "Noise schedules", "tab_sample": "Sample", "tab_denoise": "Noise, then denoise",
        "cpu_note": "Running on the CPU: defaults use the small bundled model and fewer steps. All steps are allowed.",
        "gpu_note": "Running on the GPU ({device}, {dtype}).",
    },
    "zh": {
        "intro": """# 🌫️ DDPM 探索器
观察、理解并运行**去噪扩散概率模型**（Ho 等，2020）。看一张照片如何一步步溶解为噪声，绘制噪声调度曲线，
并用本仓库自己的采样器生成图像：既可用离线可用的内置模型，也可用 Hub 上的检查点（如 `google/ddpm-cifar10-32`）。""",
        "forward": r"""### 前向扩散 $q(x_t \mid x_0)$
噪声分 $T$ 小步加入：$q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)$。
这些高斯步骤的复合有闭式解，所以任意时刻的 $x_t$ 都可以一次采样得到：
$$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\qquad \epsilon \sim \mathcal N(0, I),\quad \bar\alpha_t = \textstyle\prod_{s\le t}(1-\beta_s).$$
$\sqrt{\bar\alpha_t}$ 是保留下来的图像比例，$\sqrt{1-\bar\alpha_t}$ 是混入的噪声比例；信噪比
$\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$。相同的随机种子总会抽到相同的 $\epsilon$。""",
        "posterior": r"""### “真实”后验 $q(x_{t-1} \mid x_t, x_0)$
同时知道 $x_t$ 和原图 $x_0$ 时，上一步的分布恰好是高斯分布：
$$q(x_{t-1}\mid x_t, x_0) = \mathcal N\big(\tilde\mu_t, \tilde\beta_t I\big),\quad
\tilde\mu_t = \tfrac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}x_0 + \tfrac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t,\quad
\tilde\beta_t = \tfrac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t.$$
之所以叫“**真实**”后验：1. 它由我们定义的扩散过程精确可算；2. 它是生成 $x_{t-1}$ 的理论最优分布；
3. 但实际采样时 $x_0$ 未知，只能用网络**预测**的 $x_0$ 去近似它。右侧图像就是你上传图片的 $\tilde\mu_t$。""",
        "schedules": r"""### 噪声调度
$\beta_t$ 决定信息被破坏的速度。**linear**（Ho 等）：$\beta_t$ 从 $10^{-4}$ 线性增至 $0.02$；
**linear_improved**（教学笔记 / improved-diffusion）：两端再乘以 $1000/T$，任意 $T$ 下总噪声量相同；
**scaled_linear**：$\sqrt{\beta}$ 线性；**cosine**（Nichol & Dhariwal）：$\bar\alpha_t$ 按 $\cos^2$ 变化，两端更平缓；
**sigmoid**：$\beta$ 沿 sigmoid 曲线。最后一张图是逆向一步的方差选择：$\tilde\beta_t$（**fixed_small**，真实后验的方差）
与 $\beta_t$（**fixed_large**，Ho 等的另一选择 $\sigma_t^2=\beta_t$），二者只在 $t$ 接近 0 时不同。第一张和最后一张图使用对数坐标
（$\log_{10}$）：cosine 调度的 $\beta_t$ 在末尾达到 0.999 的上限，否则会把其他曲线压平。""",
        "sample": r"""### 采样就是生成
从纯噪声 $x_T \sim \mathcal N(0, I)$ 出发，反复应用学到的逆向一步：
$$x_{t-1} = \tilde\mu_t\big(x_t, \hat x_0(x_t, t)\big) + \sigma_t z,\qquad \hat x_0 = \tfrac{1}{\sqrt{\bar\alpha_t}}\big(x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t)\big).$$
**DDPM（较少步数）** 只保留部分时间步，并取 $\beta'_t = 1-\bar\alpha_t/\bar\alpha_{t'}$；**DDIM** 有参数 $\eta\in[0,1]$：
$\eta=0$ 为确定性采样，$\eta=1$ 接近 DDPM。轨迹图上排是 $x_t$，下排是模型预测的 $\hat x_0$。采样器是本仓库自己的
`GaussianDiffusion`，测试证明它与 diffusers 的调度器数值一致。""",
        "denoise": r"""### 先加噪，再去噪：是生成，不是复原
把你的图像加噪到第 $t$ 步，再用多个随机种子从这里运行逆向过程。$t$ 较小时结果接近原图；$t$ 较大时只保留大致布局，
变成模型所学分布中的**新**图像。DDPM 不记忆图像，它学习的是**分布**。这也是为什么只用一张图训练的 DDPM
无法把它“复原”出来：一张图只是一个点，一个点构不成可以学习的分布。（图像会被居中裁剪并缩放到模型分辨率。）""",
        "lang_label": "Language / 语言",
        "tab_forward": "前向扩散", "tab_schedules": "噪声调度", "tab_sample": "采样", "tab_denoise": "先加噪再去噪",
        "cpu_note": "当前在 CPU 上运行：默认使用内置小模型和较少步数，也可选择全部步数。",
        "gpu_note": "当前在 GPU 上运行（{device}，{dtype}）。",
    },
}
