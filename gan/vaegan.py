"""The conditional VAE of gan/vae.py whose reconstructions are also judged by the sngan's discriminator: the VAE's
whole outlines (it must reconstruct every item) with a GAN's sharpness, as VAE-GAN (Larsen et al., 2016) and the
autoencoders of VQGAN (Esser et al., 2021) and latent diffusion train theirs.

The encoder, decoder (the sngan's G) and ex-post prior are the VAE's; D is the sngan's (spectral normalisation,
projection of the category, hinge loss), and judges real items against the reconstructions, not samples of the
prior, as VQGAN's does. One iteration on a batch x of category c:

    z = mu(x, c) + sigma(x, c) * eps,  x' = G(z, c)                                   (the VAE's, reparameterised)
    L_D = E[relu(1 - D(x, c))] + E[relu(1 + D(x', c))]                                 D's hinge step
    L_E,G = E[sum_pixels (x' - x)^2 + KL(q(z | x, c) || N(0, I))] - lambda E[D(x', c)]

with lambda set at each iteration so that the adversarial term's gradient at G's last layer is as large as the
ELBO's (VQGAN's adaptive weight, Esser et al., 2021, eq. 7): no weight to tune, and neither term drowns the other
as their scales drift. Sampling, the ex-post prior (with --ex-post-components its mixture, fitted after the last
iteration) and the realism term of eq. 10 (the VAE's loss per pixel) are the VAE's; pm/main.py --realism-term
discriminator takes the sngan's -D_c(e) instead. With --prior-fakes D also judges decoded samples of the prior, G(z, c)
with z ~ N(0, I) through the ex-post prior, as Larsen et al.'s does, so that the decoder is trained to make the codes
it is sampled and optimised at look real, not only those of the training items; --prior-fakes-every K decodes only
every K-th item's code, a cheaper iteration.
"""
import torch
import torch.nn.functional as F

from common.device import autocast, memory_format
from common.distributed import global_mean, unwrap
from gan.model import descend
from gan.sngan import Discriminator
from gan.vae import VAE, negative_elbo

MAX_ADVERSARIAL_WEIGHT = 1e4   # VQGAN's clamp on lambda
GRADIENT_EPSILON = 1e-4        # VQGAN's, in lambda's denominator


def adaptive_weight(elbo, adversarial, last_weight):
    """lambda = ||grad_w ELBO|| / (||grad_w adversarial|| + eps) at G's last layer w (Esser et al., 2021, eq. 7), of
    the whole batch's gradients under torchrun, so that every rank weighs its share alike."""
    elbo_gradient, adversarial_gradient = (global_mean(torch.autograd.grad(loss, last_weight, retain_graph=True)[0])
                                           for loss in (elbo, adversarial))
    weight = elbo_gradient.norm() / (adversarial_gradient.norm() + GRADIENT_EPSILON)
    return weight.clamp(0, MAX_ADVERSARIAL_WEIGHT).detach()


class VAEGAN(VAE):
    """The conditional VAE with the sngan's D on its reconstructions (this module's docstring). Its realism terms of
    eq. 10 are the VAE's (its own, and the full ELBO) and the sngan's -D_c(e) (pm/main.py --realism-term
    discriminator)."""
    nets = ("encoder", "decoder", "discriminator")
    reads = ("ex_post_prior", "ex_post_components", "kl_weight", "prior_fakes")

    def __init__(self, cfg, num_categories, device="cpu"):
        super().__init__(cfg, num_categories, device)
        self.discriminator = Discriminator(cfg.image_size, num_categories, cfg.d_width).to(
            device, memory_format=memory_format(device, cfg.channels_last))
        self.prior_fakes, self.prior_fakes_every = cfg.prior_fakes, cfg.prior_fakes_every

    def realism_terms(self):
        return {**super().realism_terms(), "discriminator": lambda images, labels: -self.discriminator(images, labels)}

    def train_step(self, nets, optimizers, real, labels, z, bf16=True):
        """One D step on real items against reconstructions (and with --prior-fakes the decoded codes z, N(0, I),
        of every --prior-fakes-every-th item of the batch), then one step of the encoder and decoder down the negative
        ELBO and the weighted adversarial term."""
        encoder, decoder, discriminator = nets["encoder"], nets["decoder"], nets["discriminator"]
        with autocast(real.device, bf16):
            reconstruction, kl, mean, reconstructed = negative_elbo(decoder, encoder, real, labels)
            fakes, fake_labels = reconstructed, labels
            if self.prior_fakes:   # the batch's codes z ~ N(0, I), through the ex-post prior where there is one
                # every K-th row: under torchrun the rows one process takes, where each rank's part is a multiple of K
                z, z_labels = z[::self.prior_fakes_every], labels[::self.prior_fakes_every]
                sampled = decoder(self.aggregate(z, z_labels) if self.averages else z, z_labels)
                fakes, fake_labels = torch.cat([reconstructed, sampled]), torch.cat([labels, z_labels])
            scores = discriminator(torch.cat([real, fakes.detach()]), torch.cat([labels, fake_labels])).float()
        d_real, d_fake = scores[:len(real)], scores[len(real):]
        d_loss_real, d_loss_fake = F.relu(1 - d_real).mean(), F.relu(1 + d_fake).mean()
        descend(optimizers["discriminator"], d_loss_real + d_loss_fake)

        discriminator.requires_grad_(False)
        with autocast(real.device, bf16):
            adversarial = -unwrap(discriminator)(fakes, fake_labels).float().mean()
        elbo = (reconstruction + self.kl_weight * kl).mean()
        weight = adaptive_weight(elbo, adversarial, unwrap(decoder).to_rgb.weight)
        descend([optimizers["encoder"], optimizers["decoder"]], elbo + weight * adversarial)
        discriminator.requires_grad_(True)
        self.track_codes(mean, labels)
        return {"loss": elbo.detach(), "reconstruction": reconstruction.mean().detach(), "kl": kl.mean().detach(),
                "d_loss": (d_loss_real + d_loss_fake).detach(), "g_loss": adversarial.detach(),
                "adversarial_weight": weight}
