"""A class-conditional denoising diffusion model as a ConditionalGenerator (the paper's closing words ask for
"advanced GANs"; DiFashion, SIGIR 2024, generates personalised fashion with a conditional diffusion model).

Training is DDPM's (Ho et al., 2020), x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps with t ~ U{0..T-1}, except that the
UNet learns v_theta(x_t, t, c), v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (Salimans & Ho, 2022), by mean squared error:
predicting eps, the first DDIM step from pure noise lost the catalogue's white background. Sampling is DDIM's
deterministic sampler (Song et al., 2021, eta 0) in `sample_steps` steps from x_T = z: the latent code z is the
noise image, z ~ N(0, I) with z_dim = 3 S^2, and G_c(z) is a differentiable map of it, so preference maximisation
(eq. 9-12) optimises z through it (latent_box is False: --latent sphere or direct). The UNet and both schedulers
are the maintained `diffusers` library's.

    UNet(x_t, t, c), at 32x32 with width w:
    conv_in 3x3                                   32x32xw
    down: ResNet block, 2x down                   16x16xw
    down: ResNet block, 2x down                   8x8x2w
    down: ResNet block (+ self-attention)         8x8x2w
    mid: ResNet, self-attention, ResNet           8x8x2w
    up: the mirror, skip connections              32x32xw
    conv_out 3x3                                  32x32x3      v_theta
    t and c enter every ResNet block through the summed timestep and class embeddings.

The realism term of eq. 10 is the model's own denoising error on the design at REALISM_TIMESTEPS with fixed noise:
a one-sample estimate of the diffusion loss, lower where the design is more probable under the model.
`guided_sample` adds the gradient of a score of the x_0 estimate at each denoising step (classifier guidance,
Dhariwal & Nichol, 2021, with theta_u . Phi in place of the classifier): the diffusion analogue of preference
maximisation.

With --ema D, sampling, the realism term and guidance read an exponential moving average of the UNet's weights
(decay D, warmed up as min(D, (1 + n) / (10 + n)) over the first n updates), as DDPM sampled from (Ho et al., 2020,
decay 0.9999), instead of the last weights of training.
"""
import torch
import torch.nn.functional as F

from common.device import autocast, fused_adam_kwargs, memory_format
from gan.model import ConditionalGenerator, descend, moving_average, noise_image_dim

TRAIN_TIMESTEPS = 1000
REALISM_TIMESTEPS = (200, 500)      # of the realism term's denoising error
REALISM_SEED = 0                    # its fixed noise


def build_unet(image_size, num_categories, width):
    from diffusers import (
        UNet2DModel,  # imported here: diffusers takes seconds to import and only this model needs it
    )
    return UNet2DModel(sample_size=image_size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(width, 2 * width, 2 * width),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                       norm_num_groups=min(8, width), num_class_embeds=num_categories)


def ddim_scheduler(sample_steps):
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=False, prediction_type="v_prediction")
    scheduler.set_timesteps(sample_steps)
    return scheduler


class Diffusion(ConditionalGenerator):
    """The class-conditional DDPM with a DDIM sampler (this module's docstring); `nets` is its UNet alone. Its
    z_dim is 3 S^2 whatever cfg.z_dim says (gan/config.py's with_generator_latent settles the config to match)."""
    nets = ("unet",)
    reads = ("ema",)
    latent_box = False
    own_realism = "denoising"
    noise_image_codes = True
    z_distribution = "normal"

    def __init__(self, cfg, num_categories, device="cpu"):
        super().__init__()
        self.unet = build_unet(cfg.image_size, num_categories, cfg.g_width).to(
            device, memory_format=memory_format(device, cfg.channels_last))
        self.averages = ("ema_unet",) if cfg.ema else ()
        if cfg.ema:
            self.ema_unet = moving_average(self.unet, cfg.ema)
        self.image_size, self.num_categories = cfg.image_size, num_categories
        self.z_dim = noise_image_dim(cfg.image_size)
        self.scheduler = ddim_scheduler(cfg.sample_steps)
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.to(device)

    def sample_z(self, n, device="cpu", rng=None):
        return torch.randn(n, self.z_dim, device=device, generator=rng)

    def velocity(self, x, timestep, labels):
        timesteps = torch.full((len(x),), int(timestep), device=x.device)
        unet = self.ema_unet.module if self.averages else self.unet
        return unet(x, timesteps, class_labels=labels).sample

    def forward(self, z, labels):
        """DDIM from x_T = z (as noise images) to x_0, in sample_steps deterministic steps."""
        x = z.view(-1, 3, self.image_size, self.image_size)
        for timestep in self.scheduler.timesteps:
            x = self.scheduler.step(self.velocity(x, timestep, labels), timestep, x).prev_sample
        return x.clamp(-1, 1)

    def guided_sample(self, z, labels, score, scale):
        """DDIM from z where each step's noise estimate is moved along the gradient of score(x_0 estimate) [B]:
        eps' = eps - sqrt(1 - a_t) * scale * grad_{x_t} score (classifier guidance, Dhariwal & Nichol eq. 14)."""
        x = z.view(-1, 3, self.image_size, self.image_size).detach()
        for timestep in self.scheduler.timesteps:
            alpha = self.alphas_cumprod[int(timestep)]
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                v = self.velocity(x, timestep, labels)
                x0 = alpha.sqrt() * x - (1 - alpha).sqrt() * v
                gradient, = torch.autograd.grad(score(x0.clamp(-1, 1)).sum(), x)
            # eps' = eps - sqrt(1 - a) s g, and eps = sqrt(a) v + sqrt(1 - a) x, so v' = v - sqrt(1 - a) s g / sqrt(a)
            v = v.detach() - (1 - alpha).sqrt() * scale * gradient / alpha.sqrt()
            x = self.scheduler.step(v, timestep, x.detach()).prev_sample
        return x.clamp(-1, 1).detach()

    def realism_loss(self, images, labels):
        """The denoising error of v_theta on `images` at REALISM_TIMESTEPS with fixed noise; [B]."""
        rng = torch.Generator(device=images.device).manual_seed(REALISM_SEED)
        noise = torch.randn(images.shape[1:], device=images.device, generator=rng).expand_as(images)
        errors = [(self.velocity(noisy(images, noise, self.alphas_cumprod[t]), t, labels)
                   - velocity_target(images, noise, self.alphas_cumprod[t])).pow(2).mean((1, 2, 3))
                  for t in REALISM_TIMESTEPS]
        return torch.stack(errors).mean(0)

    def optimizers(self, cfg, device):
        return {"unet": torch.optim.Adam(self.unet.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                         **fused_adam_kwargs(device))}

    def train_step(self, nets, optimizers, real, labels, z, bf16=True):
        """One Adam step on ||v_theta(x_t, t, c) - v||^2, t and eps drawn from torch's generator."""
        timesteps = torch.randint(TRAIN_TIMESTEPS, (len(real),), device=real.device)
        noise = torch.randn_like(real)
        alpha = self.alphas_cumprod[timesteps][:, None, None, None]
        with autocast(real.device, bf16):
            predicted = nets["unet"](noisy(real, noise, alpha), timesteps, class_labels=labels).sample.float()
        loss = F.mse_loss(predicted, velocity_target(real, noise, alpha))
        descend(optimizers["unet"], loss)
        if self.averages:
            self.ema_unet.update_parameters(self.unet)
        return {"loss": loss.detach()}


def noisy(images, noise, alpha_cumprod):
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (DDPM's forward process)."""
    return alpha_cumprod.sqrt() * images + (1 - alpha_cumprod).sqrt() * noise


def velocity_target(images, noise, alpha_cumprod):
    """v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (Salimans & Ho, 2022): unlike eps it fixes x_0 at every t, also at the
    start of sampling where sqrt(a_t) is near 0 and an eps-prediction's x_0 would divide by it."""
    return alpha_cumprod.sqrt() * noise - (1 - alpha_cumprod).sqrt() * images
