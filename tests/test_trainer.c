/* test_trainer.c — unit tests of the trainer: config parsing (repeated and
 * empty sections, line numbers, --set, unknown keys), model construction
 * and shapes, the whole model's gradient against finite differences, and
 * the bit-exact checkpoint round trip. Label: unit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <png.h>
#include <unistd.h>

#include "cli-impl.h"
#include "image.h"
#include "run-impl.h"
#include "test_model.h"

static const char cnn_cfg[] = "[data]\n"
                              "file = none.h5\n"
                              "\n"
                              "[train]\n"
                              "batch = 4 ; inline comment\n"
                              "loss = cross_entropy\n"
                              "\n"
                              "[input]\n"
                              "shape = 2,8,8\n"
                              "\n"
                              "[conv2d]\n"
                              "filters = 3\n"
                              "size = 3\n"
                              "pad = 1\n"
                              "activation = tanh\n"
                              "[maxpool]\n"
                              "size = 2\n"
                              "[batchnorm]\n"
                              "[avgpool]\n"
                              "size = 2\n"
                              "[flatten]\n"
                              "[dense]\n"
                              "units = 5\n"
                              "activation = sigmoid\n"
                              "[dense]\n"
                              "units = 4\n";

static void test_config_sections_in_order(void **state) {
    (void)state;
    dv_config cfg;
    char err[DV_ERR_LEN];
    assert_int_equal(dv_config_load_text(&cfg, "t.cfg", cnn_cfg, err), 0);
    const char *types[] = {"data",      "train",   "input",   "conv2d", "maxpool",
                           "batchnorm", "avgpool", "flatten", "dense",  "dense"};
    assert_int_equal(cfg.nsec, 10);
    for (int i = 0; i < 10; i++)
        assert_string_equal(cfg.sec[i].type, types[i]);
    assert_string_equal(cfg.sec[8].name, "dense_1");
    assert_string_equal(cfg.sec[9].name, "dense_2");
    assert_int_equal(cfg.sec[7].line, 21); /* [flatten], true line number */
    assert_int_equal(cfg.sec[7].nkv, 0);
    long v;
    assert_int_equal(
        dv_config_int(&cfg, dv_config_find(&cfg, "train"), "batch", 0, 1, 100, &v, err), 0);
    assert_int_equal(v, 4);
    dv_config_free(&cfg);
}

static void test_config_errors_name_line(void **state) {
    (void)state;
    dv_config cfg;
    char err[DV_ERR_LEN];
    assert_int_equal(dv_config_load_text(&cfg, "t.cfg", cnn_cfg, err), 0);
    dv_config_section *d = dv_config_find(&cfg, "dense_1");
    assert_non_null(d);
    /* bad value */
    assert_int_equal(dv_config_set(&cfg, "dense_1.units=abc", err), 0);
    long units;
    assert_int_equal(dv_config_int(&cfg, d, "units", 0, 1, 10, &units, err), -1);
    assert_non_null(strstr(err, "--set dense_1.units"));
    assert_non_null(strstr(err, "not an integer"));
    /* ambiguous type */
    assert_int_equal(dv_config_set(&cfg, "dense.units=3", err), -1);
    assert_non_null(strstr(err, "dense_1"));
    /* unique type works; unknown section fails */
    assert_int_equal(dv_config_set(&cfg, "conv2d.filters=7", err), 0);
    assert_int_equal(dv_config_set(&cfg, "lstm.units=7", err), -1);
    assert_int_equal(dv_config_set(&cfg, "nodot=7", err), -1);
    dv_config_free(&cfg);

    /* unknown key, reported with its true line */
    assert_int_equal(
        dv_config_load_text(&cfg, "u.cfg", "[train]\nbatch = 4\n\n[dense]\nunitz = 3\n", err), 0);
    assert_int_equal(
        dv_config_int(&cfg, dv_config_find(&cfg, "train"), "batch", 0, 1, 9, &units, err), 0);
    assert_int_equal(dv_config_check_used(&cfg, err), -1);
    assert_non_null(strstr(err, "u.cfg:5"));
    assert_non_null(strstr(err, "unitz"));
    dv_config_free(&cfg);

    /* duplicate key, garbage line */
    assert_int_equal(dv_config_load_text(&cfg, "d.cfg", "[train]\nlr = 1\nlr = 2\n", err), -1);
    assert_non_null(strstr(err, "d.cfg:3"));
    dv_config_free(&cfg);
    assert_int_equal(dv_config_load_text(&cfg, "g.cfg", "[train]\nthis is not ini\n", err), -1);
    assert_non_null(strstr(err, "g.cfg:2"));
    dv_config_free(&cfg);
}

/* A GAN config: each model's sections become a config of its own. */
static void test_config_sub(void **state) {
    (void)state;
    static const char text[] = "[data]\nfile = none.h5\n\n"
                               "[gan]\nlatent = 3\n\n"
                               "[generator.dense]\nunits = 4\n\n"
                               "[generator.train]\nlr = 0.5\n\n"
                               "[discriminator.dense]\nname = judge\nunits = 1\n\n"
                               "[generator.reshape]\nshape = 1,2,2\nbogus = 1\n";
    dv_config cfg, g, d;
    char err[DV_ERR_LEN];
    assert_int_equal(dv_config_load_text(&cfg, "gan.cfg", text, err), 0);
    assert_non_null(dv_config_find(&cfg, "gan"));
    assert_non_null(dv_config_find(&cfg, "generator.dense_1"));
    /* --set finds sections whose names hold dots */
    assert_int_equal(dv_config_set(&cfg, "generator.dense_1.units=5", err), 0);
    assert_int_equal(dv_config_set(&cfg, "generator.train.lr=0.25", err), 0);
    assert_int_equal(dv_config_set(&cfg, "judge.units=1", err), 0);
    assert_int_equal(dv_config_set(&cfg, "generator.conv2d_1.units=5", err), -1);

    const int lat = 3;
    assert_int_equal(dv_config_sub(&cfg, "generator", &lat, 1, &g, err), 0);
    /* [input] of the latent size, then the layers without the prefix;
     * [generator.train] is not a layer */
    assert_int_equal(g.nsec, 3);
    assert_string_equal(g.sec[0].type, "input");
    assert_string_equal(g.sec[1].type, "dense");
    assert_string_equal(g.sec[1].name, "dense_1");
    assert_string_equal(g.sec[2].type, "reshape");
    long units;
    assert_int_equal(dv_config_int(&g, &g.sec[1], "units", 0, 1, 99, &units, err), 0);
    assert_int_equal(units, 5);
    /* messages name the prefixed section and the true line */
    assert_int_equal(dv_config_int(&g, &g.sec[2], "bogus", 0, 2, 9, &units, err), -1);
    assert_non_null(strstr(err, "gan.cfg:19: [generator.reshape] bogus"));
    assert_int_equal(dv_config_set(&g, "dense_1.units=x", err), 0);
    assert_int_equal(dv_config_int(&g, &g.sec[1], "units", 0, 1, 99, &units, err), -1);
    assert_non_null(strstr(err, "--set generator.dense_1.units"));

    const int img[3] = {1, 2, 2};
    assert_int_equal(dv_config_sub(&cfg, "discriminator", img, 3, &d, err), 0);
    assert_int_equal(d.nsec, 2);
    assert_string_equal(d.sec[1].name, "judge");
    const char *shape;
    assert_int_equal(dv_config_str(&d, &d.sec[0], "shape", NULL, &shape, err), 0);
    assert_string_equal(shape, "1,2,2");

    /* what the sub-configs read counts as read; the rest is reported */
    dv_config_section *gs = dv_config_find(&cfg, "gan");
    assert_int_equal(dv_config_int(&cfg, gs, "latent", 0, 1, 9, &units, err), 0);
    assert_int_equal(dv_config_str(&cfg, dv_config_find(&cfg, "data"), "file", NULL, &shape, err),
                     0);
    assert_int_equal(
        dv_config_str(&cfg, dv_config_find(&cfg, "generator.train_1"), "lr", NULL, &shape, err), 0);
    assert_int_equal(dv_config_int(&d, &d.sec[1], "units", 0, 1, 9, &units, err), 0);
    dv_config_sub_done(&cfg, &g);
    dv_config_sub_done(&cfg, &d);
    assert_int_equal(dv_config_check_used(&cfg, err), -1);
    assert_non_null(strstr(err, "gan.cfg:18: unknown key 'shape'"));
    dv_config_free(&g);
    dv_config_free(&d);

    /* a model's [input] is implied */
    dv_config bad;
    assert_int_equal(
        dv_config_load_text(&bad, "b.cfg", "[gan]\n[generator.input]\nshape = 3\n", err), 0);
    assert_int_equal(dv_config_sub(&bad, "generator", &lat, 1, &g, err), -1);
    assert_non_null(strstr(err, "b.cfg:2: [generator.input]"));
    dv_config_free(&g);
    dv_config_free(&bad);
    dv_config_free(&cfg);
}

static void test_config_text_round_trip(void **state) {
    (void)state;
    dv_config a, b;
    char err[DV_ERR_LEN];
    assert_int_equal(dv_config_load_text(&a, "t.cfg", cnn_cfg, err), 0);
    assert_int_equal(dv_config_set(&a, "train.lr=0.5", err), 0);
    char *text = dv_config_text(&a);
    assert_int_equal(dv_config_load_text(&b, "ckpt", text, err), 0);
    assert_int_equal(a.nsec, b.nsec);
    for (int i = 0; i < a.nsec; i++) {
        assert_string_equal(a.sec[i].name, b.sec[i].name);
        assert_int_equal(a.sec[i].nkv, b.sec[i].nkv);
    }
    const char *lr;
    assert_int_equal(dv_config_str(&b, dv_config_find(&b, "train"), "lr", NULL, &lr, err), 0);
    assert_string_equal(lr, "0.5");
    free(text);
    dv_config_free(&a);
    dv_config_free(&b);
}

/* The effective config: what the getters read, defaults included and
 * normalized, so two spellings of one value read the same. */
static void test_config_resolved(void **state) {
    (void)state;
    dv_config a, b;
    char err[DV_ERR_LEN];
    assert_int_equal(dv_config_load_text(&a, "a.cfg",
                                         "[train]\nlr = 0.001\nbatch = 8\nopt = adam\n\n"
                                         "[input]\nshape = 1, 28,28\n",
                                         err),
                     0);
    assert_int_equal(dv_config_load_text(&b, "b.cfg",
                                         "[train]\nlr = 1e-3\nopt = adam\n\n"
                                         "[input]\nshape = 1,28,28\n",
                                         err),
                     0);
    dv_config *both[2] = {&a, &b};
    char *text[2];
    for (int i = 0; i < 2; i++) {
        dv_config *c = both[i];
        dv_config_section *t = dv_config_find(c, "train");
        double lr;
        long batch;
        const char *opt;
        int shape[4], n;
        assert_int_equal(dv_config_float(c, t, "lr", 0.1, 0, 1, &lr, err), 0);
        assert_int_equal(dv_config_int(c, t, "batch", 8, 1, 99, &batch, err), 0);
        assert_int_equal(dv_config_str(c, t, "opt", "sgd", &opt, err), 0);
        assert_int_equal(dv_config_float(c, t, "eps", 0.1, 0, 1, &lr, err), 0);
        assert_int_equal(dv_config_ints(c, dv_config_find(c, "input"), "shape", shape, 4, &n, err),
                         0);
        /* read twice: listed once */
        assert_int_equal(dv_config_float(c, t, "lr", 0.1, 0, 1, &lr, err), 0);
        text[i] = dv_config_resolved_text(c);
        assert_non_null(text[i]);
    }
    assert_string_equal(text[0], "[train] lr\t0.001\n[train] batch\t8\n[train] opt\tadam\n"
                                 "[train] eps\t0.1\n[input] shape\t1,28,28\n");
    assert_string_equal(text[0], text[1]);
    free(text[1]);
    /* a value that 15 digits do not carry keeps 17 */
    assert_int_equal(dv_config_set(&b, "train.lr=0.10000000000000002", err), 0);
    double lr;
    assert_int_equal(dv_config_float(&b, dv_config_find(&b, "train"), "lr", 0, 0, 1, &lr, err), 0);
    text[1] = dv_config_resolved_text(&b);
    assert_non_null(strstr(text[1], "[train] lr\t0.10000000000000002\n"));
    free(text[0]);
    free(text[1]);
    dv_config_free(&a);
    dv_config_free(&b);

    /* a GAN model's keys under their prefixed sections */
    dv_config cfg, g;
    assert_int_equal(dv_config_load_text(
                         &cfg, "g.cfg", "[gan]\nlatent = 3\n\n[generator.dense]\nunits = 4\n", err),
                     0);
    const int lat = 3;
    assert_int_equal(dv_config_sub(&cfg, "generator", &lat, 1, &g, err), 0);
    long units;
    assert_int_equal(dv_config_int(&g, &g.sec[1], "units", 0, 1, 99, &units, err), 0);
    assert_int_equal(dv_config_int(&g, &g.sec[1], "stride", 1, 1, 99, &units, err), 0);
    dv_config_sub_done(&cfg, &g);
    char *t = dv_config_resolved_text(&cfg);
    assert_string_equal(t, "[generator.dense_1] units\t4\n[generator.dense_1] stride\t1\n");
    free(t);
    dv_config_free(&g);
    dv_config_free(&cfg);
}

/* The rows a rank evaluates at once: 256 by default, a token model's
 * training rows, the key when given; never fewer than the training rows. */
static void test_eval_batch(void **state) {
    (void)state;
    static const struct {
        const char *text;
        int local, want;
    } cases[] = {
        {"[data]\nfile = d.h5\n[input]\nshape = 4\n", 16, 256},
        {"[data]\nfile = d.h5\n[input]\nshape = 4\n", 512, 512},
        {"[data]\nfile = d.h5\n[input]\ntokens = 1024\n", 16, 16},
        {"[data]\nfile = d.h5\n[train]\neval_batch = 32\n[input]\ntokens = 64\n", 8, 32},
        {"[data]\nfile = d.h5\n[train]\neval_batch = 4\n[input]\nshape = 4\n", 8, 8},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dv_config cfg;
        dv_settings st;
        char err[DV_ERR_LEN];
        assert_int_equal(dv_config_load_text(&cfg, "e.cfg", cases[i].text, err), 0);
        if (dv_settings_read(&cfg, &st, err)) fail_msg("%s", err);
        assert_int_equal(dv_settings_eval_batch(&st, &cfg, cases[i].local), cases[i].want);
        dv_config_free(&cfg);
    }
}

static dv_model *build(const char *text, dv_backend *be, dv_loss loss, int B) {
    return test_model_build(text, be, loss, B, 0);
}

static void test_model_shapes(void **state) {
    (void)state;
    dv_backend *be = dv_backend_cpu_create(1);
    dv_model *m = build(cnn_cfg, be, DV_LOSS_XENT, 4);
    assert_int_equal(m->nlayers, 7);
    assert_int_equal(m->layers[0].out_shape[0], 3);
    assert_int_equal(m->layers[1].out_shape[1], 4);
    assert_int_equal(m->layers[3].out_elems, 12);
    assert_int_equal(m->outputs, 4);
    /* params: conv 3*2*9+3, bn 3+3 trainable, dense 12*5+5, 5*4+4 */
    assert_int_equal(m->nparams, 57 + 6 + 65 + 24);
    assert_int_equal(m->nbuffers, 6);
    /* reverse layout: the last dense layer's grads come first */
    assert_int_equal(m->layers[6].param[0].offset, 0);
    assert_int_equal(m->layers[6].grad_end, 24);
    assert_int_equal(m->layers[0].grad_end, m->nparams);
    dv_model_free(m);
    dv_backend_free(be);
}

/* dv_model_train_flops: 3 x forward, 2 FLOPs per multiply-add of the GEMMs
 * and convolutions, element-wise layers free; a GPT's per token is 6 N (N
 * the matmul weights) plus 6 C (T + 1) per block for the causal attention
 * (docs/gpu.md, "Throughput and MFU"). */
static void test_model_train_flops(void **state) {
    (void)state;
    dv_backend *be = dv_backend_cpu_create(1);
    dv_model *m = build("[input]\nshape = 10\n[dense]\nunits = 7\nactivation = relu\n"
                        "[dropout]\nrate = 0.5\n[dense]\nunits = 3\n",
                        be, DV_LOSS_XENT, 2);
    assert_true(dv_model_train_flops(m) == 3.0 * 2 * (10 * 7 + 7 * 3));
    dv_model_free(m);
    /* conv 2 -> 3 channels, 3x3, pad 1 on 8x8; pools and batch norm free;
     * dense 12 -> 5 -> 4 */
    m = build(cnn_cfg, be, DV_LOSS_XENT, 2);
    assert_true(dv_model_train_flops(m) == 3.0 * 2 * (3 * 8 * 8 * (2 * 3 * 3) + 12 * 5 + 5 * 4));
    dv_model_free(m);
    const int T = 6, V = 11, C = 8, HID = 16, L = 2;
    m = build("[input]\ntokens = 6\nvocab = 11\n[embedding]\nname = tok\ndim = 8\n"
              "[transformer]\nheads = 2\nhidden = 16\n[transformer]\nheads = 4\nhidden = 16\n"
              "[layernorm]\n[dense]\ntie = tok\n",
              be, DV_LOSS_XENT, 2);
    /* per block q, k, v, proj (4 C^2) and the MLP (2 C HID); the head C V */
    const double N = L * (4.0 * C * C + 2.0 * C * HID) + (double)C * V;
    const double per_token = 6 * N + 6.0 * L * C * (T + 1);
    assert_int_equal(m->positions, T);
    assert_true(fabs(dv_model_train_flops(m) / T - per_token) < 1e-9 * per_token);
    dv_model_free(m);
    dv_backend_free(be);
}

static double batch_loss(dv_model *m, int B) {
    m->be->fill(m->be->ctx, m->stats, 0, 2);
    dv_model_forward(m, B, 1);
    dv_model_loss(m, B, 1.0f);
    return m->stats[0];
}

/* The worst relative error of a model's gradient (every layer, the fused
 * loss) against central differences, in training mode (batch norm on
 * batch statistics), over every third parameter. */
static double model_grad_error(const char *cfg, dv_backend *be, dv_loss loss) {
    int B = 3;
    dv_model *m = build(cfg, be, loss, B);
    for (size_t i = 0; i < (size_t)B * m->in_elems; i++)
        m->input[i] = dv_rand_uniform(99, i) * 2 - 1;
    for (int i = 0; i < B; i++) {
        m->labels[i] = i % m->outputs;
        for (int k = 0; k < m->outputs; k++)
            m->targets[i * m->outputs + k] = dv_rand_uniform(5, (uint64_t)(i * 10 + k));
    }
    be->fill(be->ctx, m->grads, 0, m->nparams);
    batch_loss(m, B);
    dv_model_backward(m, B, NULL, NULL);
    double worst = 0;
    for (size_t i = 0; i < m->nparams; i += 3) {
        float keep = m->params[i];
        double h = 1e-2;
        m->params[i] = keep + (float)h;
        double lp = batch_loss(m, B);
        m->params[i] = keep - (float)h;
        double lm = batch_loss(m, B);
        m->params[i] = keep;
        double fd = (lp - lm) / (2 * h), an = m->grads[i];
        double err = fabs(fd - an) / fmax(1e-2, fabs(fd) + fabs(an));
        if (err > worst) worst = err;
    }
    dv_model_free(m);
    return worst;
}

/* The CNN with every loss. Max pooling is swapped for average pooling
 * here, since a finite step can move a max pool's winner (a kink the
 * kernel tests check on their own with small steps). */
static void test_model_gradient(void **state) {
    (void)state;
    dv_backend *be = dv_backend_cpu_create(1);
    char smooth[sizeof(cnn_cfg)];
    memcpy(smooth, cnn_cfg, sizeof(cnn_cfg));
    memcpy(strstr(smooth, "[maxpool]"), "[avgpool]", 9);
    const dv_loss losses[] = {DV_LOSS_XENT, DV_LOSS_MSE, DV_LOSS_BCE};
    for (int li = 0; li < 3; li++) {
        double worst = model_grad_error(smooth, be, losses[li]);
        printf("# loss %d: worst relative gradient error %.3g\n", li, worst);
        assert_true(worst < 1e-2);
    }
    dv_backend_free(be);
}

/* A generator's layers: dense to a vector, reshaped to (C, H, W),
 * upsampled, convolved with leaky ReLU, batch norm, tanh. */
static const char gen_cfg[] = "[data]\n"
                              "file = none.h5\n"
                              "[train]\n"
                              "batch = 4\n"
                              "[input]\n"
                              "shape = 6\n"
                              "[dense]\n"
                              "units = 18\n"
                              "activation = leaky_relu\n"
                              "[reshape]\n"
                              "shape = 2,3,3\n"
                              "[upsample]\n"
                              "scale = 2\n"
                              "[conv2d]\n"
                              "filters = 3\n"
                              "size = 3\n"
                              "pad = 1\n"
                              "[batchnorm]\n"
                              "[activation]\n"
                              "activation = tanh\n"
                              "[flatten]\n"
                              "[dense]\n"
                              "units = 4\n";

static void test_generator_layers(void **state) {
    (void)state;
    dv_backend *be = dv_backend_cpu_create(1);
    dv_model *m = build(gen_cfg, be, DV_LOSS_MSE, 4);
    assert_int_equal(m->layers[1].out_ndim, 3); /* reshape */
    assert_int_equal(m->layers[1].out_shape[0], 2);
    assert_int_equal(m->layers[2].out_shape[1], 6); /* upsample: 3 x 2 */
    assert_int_equal(m->layers[2].out_shape[2], 6);
    assert_int_equal(m->layers[3].out_elems, 3 * 6 * 6);
    dv_model_free(m);
    double worst = model_grad_error(gen_cfg, be, DV_LOSS_MSE);
    printf("# generator layers: worst relative gradient error %.3g\n", worst);
    assert_true(worst < 1e-2);
    dv_backend_free(be);
}

static void test_checkpoint_round_trip(void **state) {
    (void)state;
    dv_backend *be = dv_backend_cpu_create(1);
    dv_model *a = build(cnn_cfg, be, DV_LOSS_XENT, 2);
    dv_model *b = build(cnn_cfg, be, DV_LOSS_XENT, 2);
    for (size_t i = 0; i < a->nparams; i++) {
        a->params[i] = dv_rand_uniform(1, i) - 0.5f;
        a->state1[i] = dv_rand_uniform(2, i);
        a->state2[i] = dv_rand_uniform(3, i) * 1e-7f;
    }
    for (size_t i = 0; i < a->nbuffers; i++)
        a->buffers[i] = dv_rand_uniform(4, i);
    dv_train_state ts = {.step = 123,
                         .epoch = 4,
                         .step_in_epoch = 5,
                         .world_size = 3,
                         .seed = 9,
                         .global_batch = 48,
                         .best_val_loss = 0.25,
                         .bad_epochs = 1,
                         .loss_sum = 1.5,
                         .correct_sum = 7,
                         .seen = 10};
    char dir[] = "/tmp/dive-test-ckpt-XXXXXX", path[128], err[DV_ERR_LEN];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/c.h5", dir);
    assert_int_equal(dv_checkpoint_save(path, a, &ts, "[train]\nlr = 1\n", err), 0);
    dv_train_state got;
    assert_int_equal(dv_checkpoint_load(path, b, &got, 1, err), 0);
    assert_memory_equal(a->params, b->params, a->nparams * sizeof(float));
    assert_memory_equal(a->state1, b->state1, a->nparams * sizeof(float));
    assert_memory_equal(a->state2, b->state2, a->nparams * sizeof(float));
    assert_memory_equal(a->buffers, b->buffers, a->nbuffers * sizeof(float));
    assert_int_equal(got.step, 123);
    assert_int_equal(got.step_in_epoch, 5);
    assert_int_equal(got.world_size, 3);
    assert_int_equal(got.global_batch, 48);
    assert_true(got.best_val_loss == 0.25 && got.seen == 10);
    char *text = dv_checkpoint_config(path, err);
    assert_string_equal(text, "[train]\nlr = 1\n");
    free(text);
    /* a checkpoint of another model is refused, naming the dataset */
    dv_model *c = build("[input]\nshape = 2,8,8\n[conv2d]\nfilters = 4\nsize = 3\n[flatten]\n"
                        "[dense]\nunits = 4\n",
                        be, DV_LOSS_XENT, 2);
    assert_int_equal(dv_checkpoint_load(path, c, NULL, 0, err), -1);
    assert_non_null(strstr(err, "conv2d_1/weight"));
    /* no temporary files left behind */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "test $(ls %s | wc -l) -eq 1", dir);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    dv_model_free(a);
    dv_model_free(b);
    dv_model_free(c);
    dv_backend_free(be);
}

static void test_lr_schedules(void **state) {
    (void)state;
    dv_settings st = {0};
    st.lr = 0.1;
    st.epochs = 10;
    assert_true(dv_lr_at(&st, 500, 100) == 0.1); /* constant */
    st.warmup_steps = 10;
    assert_true(fabs(dv_lr_at(&st, 0, 100) - 0.01) < 1e-12);
    assert_true(fabs(dv_lr_at(&st, 9, 100) - 0.1) < 1e-12);
    st.schedule = DV_SCHED_STEP;
    st.lr_gamma = 0.5;
    st.lr_step_epochs = 3;
    assert_true(fabs(dv_lr_at(&st, 299, 100) - 0.1) < 1e-12);
    assert_true(fabs(dv_lr_at(&st, 300, 100) - 0.05) < 1e-12);
    assert_true(fabs(dv_lr_at(&st, 650, 100) - 0.025) < 1e-12);
    st.schedule = DV_SCHED_COSINE;
    st.lr_min = 0.001;
    assert_true(fabs(dv_lr_at(&st, 10, 100) - 0.1) < 1e-9);
    assert_true(fabs(dv_lr_at(&st, 505, 100) - 0.0505) < 1e-9);
    assert_true(fabs(dv_lr_at(&st, 1000, 100) - 0.001) < 1e-9);
    assert_true(dv_lr_at(&st, 700, 100) < dv_lr_at(&st, 600, 100));
}

/* ---- pictures ------------------------------------------------------------ */

/* A PNG read back with libpng: its size, colour type and pixels (malloc'd,
 * rows top to bottom), or NULL when it is not a readable PNG. */
static uint8_t *png_read(const char *path, int *w, int *h, int *channels) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    uint8_t *px = NULL;
    if (setjmp(png_jmpbuf(png))) {
        free(px);
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        return NULL;
    }
    png_init_io(png, f);
    png_read_info(png, info);
    *w = (int)png_get_image_width(png, info);
    *h = (int)png_get_image_height(png, info);
    *channels = png_get_channels(png, info);
    assert_int_equal(png_get_bit_depth(png, info), 8);
    px = malloc((size_t)*w * *h * *channels);
    for (int y = 0; y < *h; y++)
        png_read_row(png, px + (size_t)y * *w * *channels, NULL);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return px;
}

/* Three 4x5 grey images in a grid: 2 per row (ceil(sqrt(3))), 2-pixel
 * mid-grey gaps, values mapped from [-1, 1] and clamped; no PATH.tmp left;
 * a folder that does not exist fails with its name. */
static void test_image_grid_png(void **state) {
    (void)state;
    char dir[] = "/tmp/dive-png-XXXXXX", path[256], err[DV_ERR_LEN];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/grid.png", dir);
    float imgs[3 * 4 * 5];
    for (int i = 0; i < 60; i++)
        imgs[i] = -1.5f + 0.05f * (float)i; /* -1.5 .. 1.45: both ends clamp */
    assert_int_equal(dv_image_grid_png(path, imgs, 3, 1, 4, 5, -1.0f, 1.0f, 0, err), 0);
    int w, h, ch;
    uint8_t *px = png_read(path, &w, &h, &ch);
    assert_non_null(px);
    assert_int_equal(w, 2 * (5 + 2) + 2);
    assert_int_equal(h, 2 * (4 + 2) + 2);
    assert_int_equal(ch, 1);
    for (int k = 0; k < 3; k++)
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 5; x++) {
                float v = (imgs[(k * 4 + y) * 5 + x] + 1.0f) * 127.5f;
                v = v < 0 ? 0 : (v > 255 ? 255 : v);
                int ox = 2 + (k % 2) * 7, oy = 2 + (k / 2) * 6;
                assert_int_equal(px[(oy + y) * w + ox + x], (int)lrintf(v));
            }
    assert_int_equal(px[0], 128);                     /* the frame */
    assert_int_equal(px[(h - 3) * w + (w - 3)], 128); /* the empty fourth tile */
    free(px);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_equal(access(tmp, F_OK), -1);
    char bad[300];
    snprintf(bad, sizeof bad, "%s/no/such/dir/grid.png", dir);
    assert_int_equal(dv_image_grid_png(bad, imgs, 3, 1, 4, 5, -1.0f, 1.0f, 0, err), -1);
    assert_non_null(strstr(err, "no/such/dir"));
    remove(path);
    rmdir(dir);
}

static int count_rgb(const uint8_t *px, int w, int y0, int y1, uint32_t rgb) {
    int n = 0;
    for (int y = y0; y < y1; y++)
        for (int x = 0; x < w; x++) {
            const uint8_t *p = px + ((size_t)y * w + x) * 3;
            n +=
                p[0] == (uint8_t)(rgb >> 16) && p[1] == (uint8_t)(rgb >> 8) && p[2] == (uint8_t)rgb;
        }
    return n;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A synthetic metrics.csv with a GAN's two losses and a gap: two panels
 * (loss: train_loss, val_loss, d_loss, g_loss; accuracy), each holding the
 * first and second palette colours; and the mistakes a file can hold. */
static void test_plot_metrics(void **state) {
    (void)state;
    char dir[] = "/tmp/dive-plot-XXXXXX", csvp[256], png[256], err[DV_ERR_LEN];
    assert_non_null(mkdtemp(dir));
    snprintf(csvp, sizeof csvp, "%s/metrics.csv", dir);
    snprintf(png, sizeof png, "%s/curves.png", dir);
    write_text(csvp, "epoch,step,lr,train_loss,val_loss,train_acc,d_loss,g_loss,samples_per_s\n"
                     "1,10,0.1,2.0,2.1,0.3,1.3,0.8,100\n"
                     "2,20,0.1,1.5,,0.5,1.2,0.9,110\n"
                     "3,30,0.1,1.0,1.4,0.7,1.1,1.1,120\n");
    assert_int_equal(dv_plot_metrics(csvp, png, "epoch", 640, err), 0);
    int w, h, ch;
    uint8_t *px = png_read(png, &w, &h, &ch);
    assert_non_null(px);
    assert_int_equal(w, 640);
    assert_int_equal(h, 2 * 300);
    assert_int_equal(ch, 3);
    /* curves in both panels: blue and orange lines (>= 50 pixels each) */
    assert_true(count_rgb(px, w, 0, 300, 0x1f77b4) > 50);
    assert_true(count_rgb(px, w, 0, 300, 0xff7f0e) > 50);
    assert_true(count_rgb(px, w, 0, 300, 0xd62728) > 50); /* g_loss, the fourth */
    assert_true(count_rgb(px, w, 300, 600, 0x1f77b4) > 50);
    assert_int_equal(count_rgb(px, w, 300, 600, 0xff7f0e), 0); /* accuracy has one curve */
    free(px);
    assert_int_equal(dv_plot_metrics(csvp, png, "step", 640, err), 0);

    write_text(csvp, "epoch,step,lr,train_loss\n");
    assert_int_equal(dv_plot_metrics(csvp, png, "epoch", 640, err), -1);
    assert_non_null(strstr(err, "no data rows"));
    write_text(csvp, "epoch,step,lr,train_loss\n1,10,0.1,2.0\n2,20,0.1,abc\n");
    assert_int_equal(dv_plot_metrics(csvp, png, "epoch", 640, err), -1);
    assert_non_null(strstr(err, ":3: column train_loss: 'abc' is not a number"));
    write_text(csvp, "epoch,step,lr,train_loss\n1,10,0.1\n");
    assert_int_equal(dv_plot_metrics(csvp, png, "epoch", 640, err), -1);
    assert_non_null(strstr(err, ":2: 3 fields, the header has 4"));
    write_text(csvp, "epoch,step,lr\n1,10,0.1\n");
    assert_int_equal(dv_plot_metrics(csvp, png, "epoch", 640, err), -1);
    assert_non_null(strstr(err, "no metric columns"));
    remove(csvp);
    assert_int_equal(dv_plot_metrics(csvp, png, "epoch", 640, err), -1);
    assert_non_null(strstr(err, "cannot open"));
    remove(png);
    rmdir(dir);
}

/* The class score's three corners: uniform outputs (confidence 1/K, score
 * 1), confident and spread over every class (1, log K, K), confident and
 * all one class (1, 0, 1); and a mixed case against its formula. */
static void test_class_score(void **state) {
    (void)state;
    enum { K = 4, N = 8 };
    float p[N * K];
    dv_class_score sc;
    double conf, ent, is;
    for (int i = 0; i < N * K; i++)
        p[i] = 0.25f;
    assert_int_equal(dv_class_score_init(&sc, K), 0);
    dv_class_score_add(&sc, p, N);
    dv_class_score_result(&sc, &conf, &ent, &is);
    assert_true(fabs(conf - 0.25) < 1e-9 && fabs(is - 1.0) < 1e-6);
    dv_class_score_free(&sc);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < K; k++)
            p[i * K + k] = k == i % K ? 1.0f : 0.0f;
    assert_int_equal(dv_class_score_init(&sc, K), 0);
    dv_class_score_add(&sc, p, 5); /* batch by batch: 5 + 3 */
    dv_class_score_add(&sc, p + 5 * K, 3);
    dv_class_score_result(&sc, &conf, &ent, &is);
    assert_int_equal(sc.n, N);
    assert_true(fabs(conf - 1.0) < 1e-9 && fabs(ent - log(K)) < 1e-9 && fabs(is - K) < 1e-6);
    dv_class_score_free(&sc);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < K; k++)
            p[i * K + k] = k == 2 ? 1.0f : 0.0f;
    assert_int_equal(dv_class_score_init(&sc, K), 0);
    dv_class_score_add(&sc, p, N);
    dv_class_score_result(&sc, &conf, &ent, &is);
    assert_true(fabs(conf - 1.0) < 1e-9 && fabs(ent) < 1e-12 && fabs(is - 1.0) < 1e-6);
    dv_class_score_free(&sc);
    /* two images, (0.7, 0.1, 0.1, 0.1) and (0.1, 0.7, 0.1, 0.1) */
    const float q[2 * K] = {0.7f, 0.1f, 0.1f, 0.1f, 0.1f, 0.7f, 0.1f, 0.1f};
    assert_int_equal(dv_class_score_init(&sc, K), 0);
    dv_class_score_add(&sc, q, 2);
    dv_class_score_result(&sc, &conf, &ent, &is);
    const double hp = -(0.7 * log(0.7) + 3 * 0.1 * log(0.1));     /* each image's entropy */
    const double hm = -(2 * 0.4 * log(0.4) + 2 * 0.1 * log(0.1)); /* the mean's */
    assert_true(fabs(conf - 0.7) < 1e-6 && fabs(ent - log(2.0)) < 1e-9);
    assert_true(fabs(is - exp(hm - hp)) < 1e-5);
    dv_class_score_free(&sc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_sections_in_order),
        cmocka_unit_test(test_config_errors_name_line),
        cmocka_unit_test(test_config_text_round_trip),
        cmocka_unit_test(test_config_resolved),
        cmocka_unit_test(test_eval_batch),
        cmocka_unit_test(test_config_sub),
        cmocka_unit_test(test_model_shapes),
        cmocka_unit_test(test_model_train_flops),
        cmocka_unit_test(test_model_gradient),
        cmocka_unit_test(test_generator_layers),
        cmocka_unit_test(test_image_grid_png),
        cmocka_unit_test(test_plot_metrics),
        cmocka_unit_test(test_class_score),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_lr_schedules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
