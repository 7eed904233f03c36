/* ph_loop.c - the one libuv loop, the main Lua thread, and the timer and handle helpers every
 * module uses. */
#include "ph.h"

#include <stdlib.h>
#include <string.h>

static lua_State *main_state;

uv_loop_t *ph_loop(void)
{
    return uv_default_loop();
}

void ph_set_main_state(lua_State *L)
{
    main_state = L;
}

lua_State *ph_main_state(void)
{
    return main_state;
}

double ph_now(void)
{
    return (double)uv_hrtime() / 1e9;
}

uint64_t ph_ms(double seconds)
{
    return (uint64_t)(seconds * 1000.0 + 0.5);
}

uv_timer_t *ph_timer_new(void *data)
{
    uv_timer_t *t = malloc(sizeof *t);
    if (t == NULL)
        return NULL;
    uv_timer_init(ph_loop(), t);
    t->data = data;
    return t;
}

void ph_timer_start(uv_timer_t *t, uv_timer_cb cb, double seconds)
{
    uv_timer_start(t, cb, ph_ms(seconds), 0);
}

void ph_handle_free(uv_handle_t *h)
{
    free(h);
}

void ph_timer_free(uv_timer_t **tp)
{
    if (*tp == NULL)
        return;
    uv_close((uv_handle_t *)*tp, ph_handle_free); /* stops it: it never fires again */
    *tp = NULL;
}

int ph_ip_addr(const char *host, int port, struct sockaddr_storage *sa)
{
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)sa) == 0)
        return 0;
    return uv_ip6_addr(host, port, (struct sockaddr_in6 *)sa);
}
