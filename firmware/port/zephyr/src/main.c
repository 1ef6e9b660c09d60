/*
 * The EdgeProp device application on Zephyr: the training thread is Zephyr's
 * main thread (CONFIG_MAIN_STACK_SIZE), and it runs the same command loop as
 * every other port — firmware/app/main.c, built by the module as ep_app_main().
 */
int ep_app_main(int argc, char **argv);

int main(void)
{
	return ep_app_main(0, 0);
}
