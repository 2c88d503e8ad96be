/* rope.c: rotary position embedding, "rotate half" layout as Hugging Face stores q/k weights:
 * element j pairs with j + hd/2. Frequency tables with linear and llama3 scaling. */
#include <math.h>

#include "ref.h"

void st_rope_inv_freq(float *inv_freq, const struct st_rope_params *p, size_t hd) {
    const double pi = 3.14159265358979323846;
    for (size_t j = 0; j < hd / 2; j++) {
        double f = 1.0 / pow(p->theta, (double)(2 * j) / (double)hd);
        if (p->type == ST_ROPE_LINEAR) {
            f /= p->factor;
        } else if (p->type == ST_ROPE_LLAMA3) {
            double L = p->original_max_pos;
            double low_wl = L / p->low_freq_factor, high_wl = L / p->high_freq_factor;
            double wl = 2 * pi / f;
            if (wl < high_wl) {
                /* high frequency: unchanged */
            } else if (wl > low_wl) {
                f /= p->factor;
            } else {
                double s = (L / wl - p->low_freq_factor) /
                           (p->high_freq_factor - p->low_freq_factor);
                f = (1 - s) * f / p->factor + s * f;
            }
        }
        inv_freq[j] = (float)f;
    }
}

void st_rope_table(float *cos_t, float *sin_t, const float *inv_freq, size_t T, size_t hd) {
    size_t h2 = hd / 2;
    for (size_t t = 0; t < T; t++)
        for (size_t j = 0; j < h2; j++) {
            /* HF computes the angle as float32 pos * float32 inv_freq; do the same product, then
             * take cos/sin in double so the table is as exact as the angle allows. */
            float ang = (float)t * inv_freq[j];
            cos_t[t * h2 + j] = (float)cos((double)ang);
            sin_t[t * h2 + j] = (float)sin((double)ang);
        }
}

void st_ref_rope_forward(float *out, const float *inp, const float *cos_t, const float *sin_t,
                         const int32_t *pos, size_t N, size_t nh, size_t hd) {
    size_t h2 = hd / 2;
    for (size_t n = 0; n < N; n++) {
        const float *c = cos_t + (size_t)pos[n] * h2, *s = sin_t + (size_t)pos[n] * h2;
        for (size_t h = 0; h < nh; h++) {
            const float *x = inp + (n * nh + h) * hd;
            float *y = out + (n * nh + h) * hd;
            for (size_t j = 0; j < h2; j++) {
                float a = x[j], b = x[j + h2];
                y[j] = a * c[j] - b * s[j];
                y[j + h2] = b * c[j] + a * s[j];
            }
        }
    }
}

/* The rotation is orthogonal: the backward is the rotation by -angle. */
void st_ref_rope_backward(float *dinp, const float *dout, const float *cos_t, const float *sin_t,
                          const int32_t *pos, size_t N, size_t nh, size_t hd) {
    size_t h2 = hd / 2;
    for (size_t n = 0; n < N; n++) {
        const float *c = cos_t + (size_t)pos[n] * h2, *s = sin_t + (size_t)pos[n] * h2;
        for (size_t h = 0; h < nh; h++) {
            const float *dy = dout + (n * nh + h) * hd;
            float *dx = dinp + (n * nh + h) * hd;
            for (size_t j = 0; j < h2; j++) {
                float a = dy[j], b = dy[j + h2];
                dx[j] = a * c[j] + b * s[j];
                dx[j + h2] = b * c[j] - a * s[j];
            }
        }
    }
}
