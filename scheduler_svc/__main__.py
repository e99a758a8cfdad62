from scheduler_svc.main import main

main()
