from kernel_svc.main import main

main()
