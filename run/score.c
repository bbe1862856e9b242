/* score.c — a classifier's verdict on a set of images (run-impl.h,
 * dv_class_score): class probabilities, confidence, the class histogram's
 * entropy and an Inception-like score, for `dive predict --score` and a
 * GAN's score.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "run-impl.h"

/* ---- class score ------------------------------------------------------------ */

void dv_class_probs(const dv_model *m, const float *out, float *probs, int count) {
    const int K = m->outputs, soft = m->layers[m->nlayers - 1].act == DV_ACT_SOFTMAX;
    for (int i = 0; i < count; i++) {
        const float *row = out + (size_t)i * K;
        float *p = probs + (size_t)i * K, mx = row[0];
        double sum = 0;
        for (int k = 1; k < K; k++)
            mx = row[k] > mx ? row[k] : mx;
        for (int k = 0; k < K; k++)
            sum += p[k] = soft ? row[k] : expf(row[k] - mx);
        for (int k = 0; !soft && k < K; k++)
            p[k] = (float)(p[k] / sum);
    }
}

dv_status dv_class_score_init(dv_class_score *s, int K) {
    memset(s, 0, sizeof(*s));
    s->K = K;
    s->hist = calloc((size_t)K, sizeof(double));
    s->sum_p = calloc((size_t)K, sizeof(double));
    if (!s->hist || !s->sum_p) {
        dv_class_score_free(s);
        return DV_ERR;
    }
    return DV_OK;
}

void dv_class_score_add(dv_class_score *s, const float *probs, int count) {
    for (int i = 0; i < count; i++) {
        const float *p = probs + (size_t)i * s->K;
        int best = 0;
        for (int k = 0; k < s->K; k++) {
            if (p[k] > p[best]) best = k;
            s->sum_p[k] += p[k];
            if (p[k] > 0) s->sum_neg_h += (double)p[k] * log((double)p[k]);
        }
        s->sum_conf += p[best];
        s->hist[best] += 1;
        s->n++;
    }
}

void dv_class_score_result(const dv_class_score *s, double *confidence, double *class_entropy,
                           double *inception) {
    double hc = 0, hm = 0;
    for (int k = 0; s->n && k < s->K; k++) {
        double q = s->hist[k] / (double)s->n, m = s->sum_p[k] / (double)s->n;
        if (q > 0) hc -= q * log(q);
        if (m > 0) hm -= m * log(m);
    }
    *confidence = s->n ? s->sum_conf / (double)s->n : 0;
    *class_entropy = hc;
    *inception = s->n ? exp(hm + s->sum_neg_h / (double)s->n) : 0;
}

void dv_class_score_free(dv_class_score *s) {
    free(s->hist);
    free(s->sum_p);
    s->hist = s->sum_p = NULL;
}
